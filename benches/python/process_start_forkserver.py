"""process start+join (forkserver): start a multiprocessing Process (context "forkserver") whose target
pins itself to the child's CPU and returns, then join it. Prints microseconds per start+join."""
from _common import process_start_main

if __name__ == "__main__":
    process_start_main("forkserver", n_full=100, n_quick=10)
