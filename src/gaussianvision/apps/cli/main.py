"""`gsv` entry point: dispatches to one module per subcommand (imported lazily)."""
from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "info": ("gaussianvision.apps.cli.info", "header and statistics of a .gsv file"),
    "render": ("gaussianvision.apps.cli.render", "render a .gsv file to PNG at any resolution"),
    "fit": ("gaussianvision.apps.cli.fit", "fit images (files or folders) to splats"),
    "show": ("gaussianvision.apps.cli.show", "picture of the Gaussians as ellipses beside the render"),
    "convert": ("gaussianvision.apps.cli.convert", "convert image-text shards to splat shards"),
    "model": ("gaussianvision.apps.cli.model", "GS-CLIP model information"),
    "train": ("gaussianvision.apps.cli.train", "train the GS encoder or an RGB CLIP (stage 1, 2 or rgb)"),
    "eval": ("gaussianvision.apps.cli.eval", "zero-shot evaluation, RGB vs GS"),
    "probe": ("gaussianvision.apps.cli.probe", "linear probes per attribute on GS / RGB tower layers"),
    "serve": ("gaussianvision.apps.cli.serve", "serve a GS encoder over HTTP: /embed, /classify (batched)"),
    "send": ("gaussianvision.apps.cli.send", "fit images here and send the splats to a gsv serve"),
    "bench": ("gaussianvision.apps.cli.bench", "benchmarks: fit, load, codec, model, gpu, wire, serve"),
    "demo": ("gaussianvision.apps.demo.run", "the whole pipeline on bundled data"),
}


def usage() -> str:
    lines = ["usage: gsv COMMAND [options]   (gsv COMMAND --help for each)", "", "commands:"]
    lines += [f"  {name:<9} {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


def run() -> None:
    """The process entry point (the `gsv` script, python -m gaussianvision.apps.cli): main(), then its exit.

    The interpreter's exit runs full garbage collections over every object the process still holds (torch's
    and numba's: about 270,000 after a `gsv fit`), 0.6-0.9 s of a one-photo `gsv fit` that took 3.3-3.7 s in
    all. Here the garbage is collected once (0.14 s: what is unreachable now is finalized as it would have
    been) and what is left is frozen (gc.freeze), which the exit's collections pass over: a cycle that only
    becomes garbage during the exit is then not finalized (atexit handlers and weakref.finalize still run;
    the commands close their files and write them atomically before main returns). Only here, never in
    main(): a process that goes on (tests, a caller's script) keeps its collector as it was."""
    import signal
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    rc = main()
    # the command has finished (its output written and closed, stdout flushed by main): a Ctrl-C or SIGTERM from
    # now on ends the process at once with the command's code. Regression (new-user trial): one arriving during
    # the collection below was a traceback and exit 130 (and ignoring them left an exit that hangs unkillable).
    code = int(rc or 0)
    signal.signal(signal.SIGINT, lambda *_: os._exit(code))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(code))
    import gc
    gc.collect()
    gc.freeze()
    sys.exit(rc)


def _terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM (`timeout`, `kill`, a scheduler's preemption) taken as Ctrl-C: whatever SIGINT does now (Python's
    KeyboardInterrupt, or `gsv train`'s stop at the end of the step), so that the command ends as an interrupted
    one (its one line, its claims and temporary files let go). Regression (new-user trial): SIGTERM ended gsv
    convert with no word and left its shards' lock files behind."""
    import signal
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored or default (a background job): as Ctrl-C in a terminal
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rc = _dispatch(argv)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        return rc
    except BrokenPipeError:  # e.g. `gsv fit ... | head -1`: the reader left; no traceback about it
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit stays quiet
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for SIGINT (was a 40-line traceback)
        hint = _RESUME_HINTS.get(argv[0] if argv else "")
        print(f"gsv{' ' + argv[0] if hint else ''}: interrupted{f' ({hint})' if hint else ''}", file=sys.stderr)
        return 130


# what an interrupted command keeps (regression: every command's Ctrl-C line spoke of gsv convert)
_RESUME_HINTS = {
    "convert": "finished shards are kept; rerun the same command to convert the rest",
    "train": "rerun with --resume to continue: one process writes a checkpoint of the step it stopped at, several keep their last --save-every one",
    "fit": "the .gsv files of the images fitted so far are written, results.json is not",
}


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from gaussianvision import __version__
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    from gaussianvision.apps.cli.command import fail
    if name not in COMMANDS:
        return fail("gsv", f"unknown command {name!r}; choose from {', '.join(COMMANDS)} (gsv --help)", rest)
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as e:
        if e.name == COMMANDS[name][0]:
            return fail(f"gsv {name}", "not available in this version", rest)
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    run()
