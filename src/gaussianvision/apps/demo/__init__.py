"""The offline demo: its synthetic world (world/), its steps and their cache, its report."""
