"""process start+join (fork): start a multiprocessing Process (context "fork") whose target
pins itself to the child's CPU and returns, then join it. Prints microseconds per start+join."""
from _common import process_start_main

if __name__ == "__main__":
    process_start_main("fork", n_full=200, n_quick=20)
