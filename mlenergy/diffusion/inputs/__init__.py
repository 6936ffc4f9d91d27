"""What the user typed, read strictly: the command-line dataclasses, one-line refusals, image or
video. No torch."""
