"""Compile the Triton kernels for a CUDA architecture without a GPU (ahead of time).

The interpreter proves the kernels' arithmetic, but accepts programs the real compiler rejects
(types, layouts, loop bounds). Compiling to a cubin here, on a CPU-only machine, proves the
compiled path too and reports the resources (registers, spills) that decide GPU occupancy.

    compile_kernels(capability=80) -> {name: {"registers", "stack", "local", "shared", "ptx_div_rn",
                                      "ptx_ordered_atomics"}}

Needs triton with its NVIDIA backend (ptxas and cuobjdump ship inside the triton wheel).
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

__all__ = ["compile_kernels"]

_INT64_PTRS = {"ids_ptr", "offsets_ptr"}
_INTS = {"H", "W", "NTX", "T"}


def _signature(fn) -> dict[str, str]:
    sig = {}
    for a in fn.arg_names:
        if a in _INT64_PTRS:
            sig[a] = "*i64"
        elif a.endswith("_ptr"):
            sig[a] = "*fp32"
        elif a in _INTS:
            sig[a] = "i32"
        else:
            sig[a] = "constexpr"
    return sig


def _usage(cubin: bytes, cuobjdump: Path) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(path)], capture_output=True,
                              text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if m is None:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{text}")
    reg, stack, shared, local = (int(v) for v in m.groups())
    return {"registers": reg, "stack": stack, "shared": shared, "local": local}


def compile_kernels(capability: int = 80) -> dict[str, dict[str, int]]:
    """Compile the forward and both backwards with gpu_triton's current launch shapes for sm_<capability>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from gaussianvision.raster import _triton_kernels as K
    from gaussianvision.raster import gpu_triton as G
    from gaussianvision.raster.reference import CUTOFF_Q

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    chunk = G.bwd_launch(G.TILE)[1] if G.BWD_KERNEL == "chunked" else {"CHUNK": min(G.BWD_CHUNK, G.TILE * G.TILE)}
    shapes = {"splat_fwd_kernel": (G.BLOCK_N, G.NUM_WARPS, {}),
              "splat_bwd_kernel": (G.BLOCK_N_BWD, G.NUM_WARPS_BWD, chunk),
              "splat_bwd_tile_kernel": (G.BLOCK_N_BWD, G.NUM_WARPS_BWD, {})}
    report = {}
    for name, (block_n, warps, extra) in shapes.items():
        fn = getattr(K, name)
        if not isinstance(fn, JITFunction):  # decorated under TRITON_INTERPRET=1
            fn = JITFunction(fn.fn)
        consts = {"CUTOFF_Q": CUTOFF_Q, "TILE_H": G.TILE, "TILE_W": G.TILE, "BLOCK_N": block_n, **extra}
        kernel = triton.compile(ASTSource(fn, _signature(fn), consts), target=GPUTarget("cuda", capability, 32),
                                options={"num_warps": warps})
        info = _usage(kernel.asm["cubin"], cuobjdump) if cuobjdump.exists() else {}
        info["ptx_div_rn"] = kernel.asm["ptx"].count("div.rn.f32")
        info["ptx_ordered_atomics"] = len(re.findall(r"atom\.global\.gpu\.acq", kernel.asm["ptx"]))  # fenced: slow
        report[name] = info
    return report
