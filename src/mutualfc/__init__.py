"""mutualfc: feature coding for machines (learnt mutual feature compression and standard anchors)."""

import warnings

__version__ = "0.2.0"

# CompressAI's package import pulls in torch_geometric, which calls the deprecated torch.jit.script at import time;
# the warning says nothing about mutualfc, so it is kept off the user's terminal (only that message, from torch.jit).
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning, module=r"torch\.jit")
