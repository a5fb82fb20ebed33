"""Decision logic shared by the simulator and the runtime: caches, prefetchers, governors (DESIGN §4)."""
