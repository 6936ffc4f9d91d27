"""The plan applied to a built pipeline: xDiT's engine and its calls, and the performance options
put in place on every rank."""
