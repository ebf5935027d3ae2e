"""The boundary of every command line: an expected failure becomes one sentence and exit code 2.

    sys.exit(run_main(lambda: body(args), expected=(CheckpointError,)))

Library code raises exceptions whose message is a sentence for the user (``DataError``,
``LoaderUnavailable``, ``ValueError``, and whatever a command adds in ``expected``); the operating
system's (``OSError``: a full disk, a folder that cannot be written, a file that cannot be read) and the
GPU's (out of memory) are translated here, once, naming the file and what to do. Ctrl-C prints the
command's own sentence (what was kept, what to run next) and exits 130. Anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable

INTERRUPTED = 130


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Shows each option's default where it has one (not "None" or an off switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default is None or default is False or default is argparse.SUPPRESS
                or not action.option_strings
                or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class HelpFormatter(DefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """DefaultsHelpFormatter that keeps the description's and the epilog's own lines (train.py's examples)."""


def os_error_sentence(e: OSError) -> str:
    """One sentence for an OSError: what failed, on which file, and what to do."""
    where = f" {e.filename}" if e.filename is not None else ""
    if e.filename2 is not None:
        where += f" -> {e.filename2}"
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the disk (while writing{where}): free some space, or point the output "
                f"elsewhere, and run the command again.")
    if code in (errno.EACCES, errno.EPERM):
        return (f"permission denied for{where or ' a file'}: pick a file or folder you can read and write, "
                f"or change its permissions.")
    if code == errno.EROFS:
        return f"{where.strip() or 'the output'} lies on a read-only file system: pick a writable folder."
    if code == errno.ENOENT:
        return f"{where.strip() or 'a file'} does not exist."
    if code == errno.EEXIST:
        return f"{where.strip()} exists and is not a folder, where a folder was needed: pick another path."
    if code == errno.ENOTDIR:
        return f"a part of{where} is a file, not a folder: pick another path."
    if code == errno.EISDIR:
        return f"{where.strip()} is a folder, where a file was expected: pick another path."
    if code == errno.ENAMETOOLONG:
        return f"the path{where} is too long: pick a shorter one."
    if code == errno.EBUSY:
        return (f"{where.strip() or 'a file or folder'} is in use or a mount point (device or resource busy), and "
                f"cannot be replaced: pick a folder inside it, or another path.")
    if code == errno.EIO:
        return f"the disk failed to read or write{where} (input/output error): check the disk and try again."
    return f"{where.strip() or 'a file operation'} failed: {e.strerror or e}."


def _base_expected() -> tuple[type[BaseException], ...]:
    from pipeline import LoaderUnavailable
    from pipeline.format import DataError
    return DataError, LoaderUnavailable, ValueError


def _out_of_memory() -> tuple[type[BaseException], ...]:
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (oom,) if oom is not None else ()


def _raised_by_argparse(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename == argparse.__file__


def run_main(body: Callable[[], int | None], *, expected: tuple[type[BaseException], ...] = (),
             interrupted: str | Callable[[], str] = "interrupted.") -> int:
    """Run a command's body; returns its exit code (0 when it returns None)."""
    try:
        code = body()
        return 0 if code is None else int(code)
    except KeyboardInterrupt:
        text = interrupted() if callable(interrupted) else interrupted
        print(f"\n{text}", file=sys.stderr)
        return INTERRUPTED
    except SystemExit as e:     # exit() called by code the command ran (a user's model or policy): not a success
        if _raised_by_argparse(e):
            raise               # --help, or a bad flag: argparse has said it
        code = "" if e.code is None else repr(e.code)
        print(f"error: code the command ran called exit({code}) before the command finished (a --model or "
              f"--policy file's code?): nothing after it was done; remove that call.", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {os_error_sentence(e)}", file=sys.stderr)
        return 2
    except (*_base_expected(), *expected) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except _out_of_memory():
        print("error: the GPU ran out of memory: pass a smaller --batch-size, or free the GPU of other work.",
              file=sys.stderr)
        return 2
