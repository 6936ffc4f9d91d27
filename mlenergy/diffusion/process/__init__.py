"""This process: how it was launched, its process group and failure rules, dying with its launcher,
the collective watchdog, the console, xDiT imported without CUDA, the test hooks."""
