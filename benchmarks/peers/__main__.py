"""`python -m benchmarks.peers`: see benchmarks/peers/harness.py."""

from benchmarks.peers.harness import main

main()
