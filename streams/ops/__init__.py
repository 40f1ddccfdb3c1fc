"""Running it: the local stack, the demo, replays and the flash-sale generator."""
