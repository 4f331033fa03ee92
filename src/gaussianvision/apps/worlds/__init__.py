"""Captioned synthetic worlds beside the demo's (apps/demo/world/): other generators with other
attributes, layouts and caption grammars, used to check that training defaults are not tuned to
one world. Each writes the formats the `gsv` commands read (docs/world.md)."""
