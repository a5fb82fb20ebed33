"""moespeq: offloaded Mixture-of-Experts inference with speculative quantized decoding (MoE-SpeQ).

Core (this package) holds model specs, hardware profiles, memory budgets, the lookahead trace format and
the policies; `moespeq.sim`, `moespeq.runtime`, `moespeq.traces` and `moespeq.analysis` build on it.
Importing it never imports torch or cupy.
"""

__version__ = "0.1.0"
