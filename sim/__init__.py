"""The discrete-event simulator of offloaded MoE decoding (SimPy): machine, costs, decode cycle, systems, search.

The decision logic lives in moespeq.policy; this package only answers "when". simpy is imported by the
modules that model time (machine, cycle, run), never by moespeq's core.
"""
