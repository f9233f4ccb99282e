"""process start+join (spawn): start a multiprocessing Process (context "spawn") whose target
pins itself to the child's CPU and returns, then join it. Prints microseconds per start+join."""
from _common import process_start_main

if __name__ == "__main__":
    process_start_main("spawn", n_full=30, n_quick=5)
