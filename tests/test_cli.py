import subprocess
import sys

from rl.cli.app import COMMANDS, main, parser


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command_names_the_valid_ones(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "'trian'" in err and "train" in err and "demo" in err


def test_every_command_parses_its_help_and_has_a_command():
    import importlib

    for name, cmd in COMMANDS.items():
        module = importlib.import_module(cmd.module)
        assert callable(module.command), cmd.module
        assert parser(name, module).format_help().startswith(f"usage: samtok-rl {name}")


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "rl.cli", "--help"], capture_output=True, text=True, check=True)
    assert "usage: samtok-rl" in out.stdout


def test_a_reader_that_closes_the_pipe_early_is_not_an_error():
    """`samtok-rl env | head -3`: the command stops quietly, without a BrokenPipeError traceback. Here stdout is a
    pipe whose reader is already gone, so every write fails as it does once `head` has exited."""
    child = ("import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); sys.argv = ['samtok-rl', '--help']\n"
             "from rl.cli.app import console; sys.exit(console())")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert proc.returncode == 0 and "BrokenPipe" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
