"""The applications beside the library: the gsv command line, the benchmarks and the demo.

They import the library (gaussianvision.splats, raster, fit, data, models, train, eval); the
library never imports them (tests/test_architecture.py)."""
