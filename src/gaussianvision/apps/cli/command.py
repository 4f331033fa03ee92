"""Helpers shared by the CLI commands: JSON output, errors, resolved-config files."""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import textwrap
from pathlib import Path

from gaussianvision.atomic import check_writable

__all__ = ["CliError", "emit", "write_json", "write_text", "parser", "run", "json_error", "fail", "HelpFormatter"]


class CliError(Exception):
    """A user-facing error: printed as 'gsv CMD: message', exit code 2."""


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help line (unless the help names it already); the line
    breaks of descriptions and epilogs are kept (each line still wraps to the terminal)."""

    def _fill_text(self, text, width, indent):
        return "\n".join(textwrap.fill(line, width, initial_indent=indent,
                                        subsequent_indent=indent + " " * (len(line) - len(line.lstrip())))
                         for line in textwrap.dedent(text).splitlines())

    def _format_action(self, action):
        d = action.default
        shown = (action.option_strings and d is not None and d is not False and d != []
                 and d is not argparse.SUPPRESS and action.help is not argparse.SUPPRESS
                 and "default" not in (action.help or "").lower())
        if shown:
            action = copy.copy(action)
            action.help = f"{action.help or ''} (default: %(default)s)".lstrip()
        return super()._format_action(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser; with --json among the arguments, an option error is JSON on stdout."""

    def parse_known_args(self, args=None, namespace=None):
        if not getattr(self, "_intermixed", False):  # the intermixed parse calls this on parts of the line
            self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def parse_known_intermixed_args(self, args=None, namespace=None):
        self._argv, self._intermixed = list(sys.argv[1:] if args is None else args), True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False

    def error(self, message):
        """One line and exit code 2 (argparse's usage block is what --help is for)."""
        if "--json" in getattr(self, "_argv", ()):
            json_error(self.prog, message)
            self.exit(2)
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def whole(lo: int, hi: int | None = None):
    """argparse type: a whole number from lo (to hi); argparse says the option and this reason in one line."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {f'from {lo} to {hi}' if hi is not None else f'>= {lo}'}, got {v}")
        return v
    return parse


def path_text(text: str) -> str:
    """argparse type: a path as given, not empty (regression: "" named the current folder: gsv fit "" fitted
    its images, --out "" wrote into it)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text


def path_arg(text: str) -> Path:
    """argparse type: a Path, not empty (path_text)."""
    return Path(path_text(text))


def positive(text: str) -> float:
    """argparse type: a positive finite number (seconds, milliseconds)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def whole_list(lo: int):
    """argparse type: comma-separated whole numbers, each >= lo (at least one)."""
    one = whole(lo)

    def parse(text: str) -> list[int]:
        items = [t for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}")
        return [one(t.strip()) for t in items]
    return parse


def check_not_a_file(out: str | os.PathLike, option: str = "--out") -> None:
    """One CliError line where the output folder `out` names a file (nothing is made here: commands that make
    their folder later check this first). Regression (new-user trial): "(File exists)" or "File exists"."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise CliError(f"{option} {out}: is not a folder (a file of that name exists; give a new or existing folder)")


def check_out_folder(out: Path, option: str = "--out") -> None:
    """CliError now, before a long run, when results cannot be written into `out` (created when missing);
    regression: a benchmark ran for minutes and then failed to write."""
    check_not_a_file(out, option)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"{option} {out}: cannot create the folder ({e.strerror or e})") from None
    if not out.is_dir():
        raise CliError(f"{option} {out}: not a folder")
    try:
        check_writable(out)
    except OSError as e:
        raise CliError(f"{option} {out}: not a writable folder ({e.strerror or e})") from None


def check_at_least(*checks: tuple[str, int | None, int]) -> None:
    """(flag, value, lowest) each: one CliError line naming the first flag whose value (when given) is
    below its lowest, with that value."""
    for flag, value, lo in checks:
        if value is not None and value < lo:
            raise CliError(f"{flag} must be >= {lo}, got {value}")


def check_distinct(values: list[str], flag: str) -> None:
    """One CliError line naming a value given twice to a repeatable `flag` (before any slow work uses them)."""
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise CliError(f"{flag} {twice}: given twice")


def check_gaussians(n: int | None, size: int | None) -> None:
    """--gaussians against --size (square images of size x size; None or 0: each image's own size, checked
    per image by the fit): at most one Gaussian per pixel, one CliError line otherwise."""
    from gaussianvision.fit.config import too_many_gaussians
    from gaussianvision.fit.metrics import SSIM_WINDOW
    if n is not None and size is not None and size >= SSIM_WINDOW and (  # a bad --size is its own message
            reason := too_many_gaussians(n, size, size, f"--gaussians {n}", where=f" (--size {size})")):
        raise CliError(reason)


def check_encoding(encoding, config, flags: dict[str, str]) -> None:
    """A FitStream's encoding against its fit config (Encoding.fit_config), before any work: one CliError
    line on --progressive, the options named by the flags that set them (regression: --progressive with
    an SSIM loss was a traceback from the stream in gsv fit, convert and send)."""
    try:
        encoding.fit_config(config)
    except ValueError as e:
        raise CliError(f"--progressive: {flag_message(str(e), flags)}") from None
    if config.prefix_fractions and not (encoding.progressive and encoding.order == "nested"):
        # regression (new-user trial): the nested fit ran (slower, and its full set 1 dB below a plain fit's), and a
        # plain file was written, whose prefixes the reader then refused
        given = ",".join(f"{f:g}" for f in config.prefix_fractions)
        fix = ("use --progressive-order nested (the default) or drop prefix_fractions" if encoding.progressive
               else "add --progressive")
        raise CliError(f"--fit-option prefix_fractions={given}: a nested fit, whose prefixes only a progressive file in "
                       f"nested order keeps; {fix}")


def check_progressive_order(a) -> None:
    """--progressive-order: set to "nested" when not given; one CliError line when given without
    --progressive (regression: accepted and ignored, a plain file written)."""
    if a.progressive_order is not None and not a.progressive:
        raise CliError(f"--progressive-order {a.progressive_order}: goes with --progressive (it orders the Gaussians "
                       "of a progressive file)")
    a.progressive_order = a.progressive_order or "nested"


def check_device(device: str | None) -> None:
    """--device: None, cpu, cuda or cuda:N of this machine; else one CliError line."""
    import torch
    if device is None or device == "cpu":
        return
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise CliError(f"--device {device}: expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise CliError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if index and int(index) >= torch.cuda.device_count():
        raise CliError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def parser(cmd: str, description: str, **kwargs) -> ArgumentParser:
    p = ArgumentParser(prog=f"gsv {cmd}", description=description, formatter_class=HelpFormatter, **kwargs)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    return p


def json_error(command: str, message: str) -> None:
    """The error of a --json run: {"error", "command"} on stdout, the one line on stderr."""
    print(json.dumps({"error": str(message), "command": command}))
    print(f"{command}: {message}", file=sys.stderr)


def fail(command: str, message: str, argv) -> int:
    """Report an error before the options are parsed (JSON when --json is among argv); 2."""
    if "--json" in argv:
        json_error(command, message)
    else:
        print(f"{command}: {message}", file=sys.stderr)
    return 2


def _default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def emit(obj, as_json: bool, human: str | None = None) -> None:
    """Print `obj` as JSON (as_json) or the human text (default: indented JSON)."""
    if as_json or human is None:
        print(json.dumps(obj, indent=None if as_json else 2, default=_default))
    else:
        print(human)


def key_value(text: str, option: str, form: str = "KEY=VALUE", example: str = "") -> tuple[str, str]:
    """One "KEY=VALUE" item of a repeatable option -> (KEY stripped, VALUE as given); a CliError
    naming the option and the item when there is no '=' or no key."""
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise CliError(f"{option} {text!r}: expected {form}" + (f", e.g. {example}" if example else ""))
    return key.strip(), value


def fit_option(text: str) -> tuple[str, object]:
    """--fit-option KEY=VALUE -> (KEY, VALUE parsed as JSON, a list of comma-separated JSON numbers
    such as 0.25,0.5,1.0, or the bare word)."""
    key, value = key_value(text, "--fit-option", example="relocate_every=10")
    try:
        return key, json.loads(value)
    except ValueError:
        pass
    if "," in value:  # regression: prefix_fractions=0.25,1.0 (as docs/data.md writes it) was one string
        try:
            return key, [_number(x) for x in value.split(",")]
        except ValueError:
            pass
    return key, value  # a bare word such as backend=numba


def _number(text: str) -> int | float:
    """'3' -> 3, '.5' or '1e-3' -> float; ValueError otherwise."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


def flag_message(message: str, flags: dict[str, str]) -> str:
    """A fit option's error named by the flag that set it (--plateau, not plateau_patience): `flags`
    maps option names to flags. A message about unknown --fit-option names is left as it is."""
    if message.startswith("fit options ["):
        return message
    named = message
    for option, flag in flags.items():
        named = re.sub(rf"\b{option}\b", flag, named)
    return named if named == message else named.replace(" or None", " (or not given)")


def fit_option_message(message: str, flags: dict[str, str]) -> str:
    """A fit option's error named by the flag that set it (flag_message), else put on --fit-option."""
    named = flag_message(message, flags)
    return named if named != message else f"--fit-option: {message}"


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically (temporary name, then rename; removed on failure), creating the folder."""
    from gaussianvision.atomic import write_text_atomic
    write_text_atomic(path, text, mkdir=True)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    write_text(path, json.dumps(obj, indent=2, default=_default) + "\n")


def stdout_closed() -> bool:
    """True when stdout is a pipe whose reader has gone (poll reports an error on it)."""
    import select
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # replaced by a buffer (tests) or closed
        return False
    if not hasattr(select, "poll"):
        return True  # no poll (Windows): a broken pipe during output is most likely stdout
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def run(cmd: str, fn, args) -> int:
    """Call fn(args); turn our known errors into one clear line and exit code 2."""
    from gaussianvision.data.images import ImageLoadError
    from gaussianvision.data.shards import show
    from gaussianvision.splats.types import SplatsError
    try:
        return int(fn(args) or 0)
    except (CliError, SplatsError, ImageLoadError, OSError) as e:  # OSError: e.g. a path too long
        if isinstance(e, BrokenPipeError) and stdout_closed():
            raise  # the reader of stdout left: gsv's main ends quietly; any other pipe is an error
        if isinstance(e, OSError) and e.filename is not None and e.strerror:
            e = CliError(f"{e.filename}: {e.strerror}")
        if getattr(args, "json", False):
            json_error(f"gsv {cmd}", e)
        else:
            print(f"gsv {cmd}: {show(str(e), None)}", file=sys.stderr)  # one line, whatever names it holds
        return 2


def add_speed_options(p, prefix: str = "") -> None:
    """--preset, --budget-ms and --target-psnr (as --{prefix}preset, ...): fit/presets.py's presets,
    FitConfig.budget_ms and target_psnr, for every command that fits (fit, convert, eval and probe with prefix
    "fit-"; send has its own --preset, default fast, and these two)."""
    from gaussianvision.fit.presets import PRESETS
    p.add_argument(f"--{prefix}preset", choices=list(PRESETS), default=None,
                   help="speed preset (fast: 150 iterations, colors solved, coarse to fine, relocation; balanced: "
                        "500; best: 2000); options given beside it win (docs/fitting.md). Default: plain Adam, 500")
    p.add_argument(f"--{prefix}budget-ms", type=float, default=None,
                   help="stop each fitted batch once it has spent this many wall ms per image (initialization included)")
    add_target_option(p, prefix)


def add_target_option(p, prefix: str = "") -> None:
    p.add_argument(f"--{prefix}target-psnr", type=float, default=None,
                   help="stop fitting an image once it reaches this PSNR (dB)")


def add_progressive_options(p, what: str = "Gaussians") -> None:
    """--progressive and --progressive-order, for every command that writes or sends splats
    (fit, convert, send): fit/stream.py's Encoding(progressive, order)."""
    p.add_argument("--progressive", action="store_true",
                   help=f"write the {what} so that any prefix is a coarser image (a nested fit: prefixes of "
                        "1/8, 1/4, 1/2 and all the Gaussians each fitted to the image; the header records it)")
    from gaussianvision.fit.progressive import ENCODING_ORDERS
    p.add_argument("--progressive-order", choices=ENCODING_ORDERS, default=None,
                   help="with --progressive: nested (default): fit nested, about 1.4-4x the fit time, good "
                        "prefixes; eliminate / greedy: reorder a plain fit by importance (no extra fit time, poor "
                        "short prefixes)")
