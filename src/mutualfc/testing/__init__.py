"""Tools for testing mutualfc and what is built on it: the container/payload fuzzer."""
