"""The code blocks of a Markdown page, run as a reader following the page would run them.

A page's ```python blocks run in one namespace and its ```bash / ```sh / ```console blocks command by command, all
in order, in one fresh working directory. An HTML comment right before a block (unseen on the rendered page) says
how the test runs it, one action per line:

    <!-- test: skip (why) -->                       not run; the reason is reported as a pytest skip
    <!-- test: replace `OLD` with `NEW` (why) -->    OLD must occur; it is replaced before the block runs
    <!-- test: append `ARGS` (why) -->               ARGS go at the end of every command of a shell block
    <!-- test: append `ARGS` to `PREFIX` (why) -->   ... of every command that starts with PREFIX
    <!-- test: drop `PREFIX` (why) -->               commands that start with PREFIX are not run (reported)
    <!-- test: server `URL` -->                      each command starts a server in the background; the next one
                                                     runs once URL answers; all stop when the page ends
    <!-- test: needs `PROGRAM` ... -->               skipped, saying so, where a program is not installed
    <!-- test: slow (why) -->                       run only by the slow tests (-m slow, part of `make test`),
                                                     which run the whole page; the default suite runs the rest

A reason in parentheses is optional after ``replace`` and ``append``. ``<!-- test-page: ... -->`` anywhere on a
page: ``replace`` or ``slow`` for every block. In NEW, ARGS and URL, ``{port}`` is a free TCP port (one per page)
and ``{model}`` the shipped model's directory.
Shell commands see ``configs/``, ``benchmarks/`` and ``apps/`` of the repository, as in a checkout, and write into
the working directory; ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL = ("bash", "sh", "console")
NOT_RUN = ("text", "yaml", "json", "")  # listings and file contents; an unlabelled fence is an error
CHECKOUT = ("configs", "benchmarks", "apps")  # what a reader's working directory shows of a source checkout
COMMAND_TIMEOUT = 600
SERVER_TIMEOUT = 300
DIRECTIVE = re.compile(r"<!--\s*test(-page)?:(.*?)-->", re.S)
ACTIONS = {
    "skip": re.compile(r"skip \((?P<reason>.+)\)"),
    "slow": re.compile(r"slow \((?P<reason>.+)\)"),
    "replace": re.compile(r"replace `(?P<old>[^`]+)` with `(?P<new>[^`]*)`(?: \((?P<why>.+)\))?"),
    "append": re.compile(r"append `(?P<args>[^`]+)`(?: to `(?P<prefix>[^`]+)`)?(?: \((?P<why>.+)\))?"),
    "drop": re.compile(r"drop `(?P<prefix>[^`]+)` \((?P<reason>.+)\)"),
    "server": re.compile(r"server `(?P<url>[^`]+)`"),
    "needs": re.compile(r"needs (?P<programs>(?:`[^`]+` ?)+)"),
}
PAGE_ACTIONS = ("replace", "slow")  # the actions a test-page comment may hold


@dataclass(frozen=True)
class Action:
    kind: str
    args: dict[str, str]


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the first line of code
    language: str
    code: str
    actions: tuple[Action, ...] = ()

    @property
    def slow_reason(self) -> str | None:
        return next((a.args["reason"] for a in self.actions if a.kind == "slow"), None)

    @property
    def where(self) -> str:
        return f"{shown(self.page)}:{self.line}"

    def reason_not_run(self) -> str | None:
        """Why this block does not run at all here, or None."""
        for action in self.actions:
            if action.kind == "skip":
                return action.args["reason"]
            if action.kind == "needs":
                missing = [p for p in re.findall(r"`([^`]+)`", action.args["programs"]) if not shutil.which(p)]
                if missing:
                    return f"needs {', '.join(missing)}, not installed here"
        return None


@dataclass(frozen=True)
class Page:
    path: Path
    blocks: tuple[Block, ...]
    actions: tuple[Action, ...]

    def runnable(self) -> list[Block]:
        return [b for b in self.blocks if b.language == "python" or b.language in SHELL]

    def has_slow_blocks(self) -> bool:
        return any(b.slow_reason and not b.reason_not_run() for b in self.runnable())

    def has_fast_blocks(self) -> bool:
        return any(not b.slow_reason and not b.reason_not_run() for b in self.runnable())

    def not_run(self) -> list[tuple[str, str]]:
        """(where, why) for every block and shell command of the page that the test leaves out."""
        out = [(b.where, why) for b in self.runnable() if (why := b.reason_not_run())]
        for block in self.runnable():
            if block.language in SHELL and not block.reason_not_run():
                for action in block.actions:
                    if action.kind == "drop":
                        out += [(f"{block.where} `{c}`", action.args["reason"]) for c in commands(block)
                                if c.startswith(action.args["prefix"])]
        return out


def shown(path: Path) -> str:
    """``path`` as the repository names it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def parse_actions(body: str, where: str, page_level: bool) -> list[Action]:
    """One action per line; a line that does not start with an action's name continues the line before."""
    lines: list[str] = []
    for line in filter(None, (line.strip() for line in body.strip().splitlines())):
        if lines and line.split(" ", 1)[0] not in ACTIONS:
            lines[-1] += " " + line
        else:
            lines.append(line)
    actions = []
    for line in lines:
        kind = line.split(" ", 1)[0]
        match = ACTIONS[kind].fullmatch(line) if kind in ACTIONS else None
        if not match or (page_level and kind not in PAGE_ACTIONS):
            raise ValueError(f"{where}: not a test directive here: {line!r} (see tests/doc_blocks.py)")
        actions.append(Action(kind, {k: v for k, v in match.groupdict().items() if v is not None}))
    return actions


def parse_page(path: Path) -> Page:
    """The page's fenced blocks with the directives before them; malformed or stray directives are errors."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    page_actions: list[Action] = []
    pending: list[Action] = []
    i = 0
    while i < len(lines):
        where = f"{shown(path)}:{i + 1}"
        comment = DIRECTIVE.match(lines[i].strip())
        if lines[i].strip().startswith("<!--") and re.match(r"<!--\s*test", lines[i].strip()) and not comment:
            end = next(j for j in range(i, len(lines)) if "-->" in lines[j])
            comment = DIRECTIVE.match("\n".join(lines[i:end + 1]).strip())
            i = end
        if comment:
            parsed = parse_actions(comment.group(2), where, page_level=bool(comment.group(1)))
            (page_actions if comment.group(1) else pending).extend(parsed)
        elif (fence := re.fullmatch(r"```(\S*)\s*", lines[i])):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            language = fence.group(1)
            if language not in (*SHELL, "python", *NOT_RUN) or language == "":
                raise ValueError(f"{where}: label the block (```python, ```bash, ```text ...), got {language!r}")
            blocks.append(Block(path, i + 2, language, "\n".join(lines[i + 1:end]) + "\n", tuple(pending)))
            pending, i = [], end
        elif lines[i].strip() and pending:
            raise ValueError(f"{where}: a test directive must come right before a code block")
        i += 1
    slow = tuple(a for a in page_actions if a.kind == "slow")
    return Page(path, tuple(dataclasses.replace(b, actions=(*slow, *b.actions)) for b in blocks), tuple(page_actions))


# ---- shell commands --------------------------------------------------------------------------------------------


def split_commands(script: str) -> list[str]:
    """One string per command of a shell script: continued lines joined, comments dropped, quotes kept whole."""
    out: list[str] = []
    current = ""
    quote = ""
    i = 0
    while i < len(script):
        c = script[i]
        if quote:
            current += c
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"':
                current, i = current + script[i + 1:i + 2], i + 1
        elif c in "'\"":
            quote, current = c, current + c
        elif c == "\\" and script[i + 1:i + 2] == "\n":
            current, i = current + " ", i + 1
        elif c == "#" and (not current or current[-1].isspace()):
            while i + 1 < len(script) and script[i + 1] != "\n":
                i += 1
        elif c == "\n" and not current.rstrip().endswith(("|", "&&", "||")):
            out.append(current.strip())
            current = ""
        else:
            current += c
        i += 1
    out.append(current.strip())
    return [c for c in out if c]


def console_script(text: str) -> str:
    """The commands of a ```console block: lines after a ``$ `` prompt (and their continuations); output dropped."""
    keep, continued = [], False
    for line in text.splitlines():
        if line.startswith("$ ") or continued:
            keep.append(line[2:] if line.startswith("$ ") and not continued else line)
            continued = line.rstrip().endswith("\\")
    return "\n".join(keep) + "\n"


def commands(block: Block) -> list[str]:
    return split_commands(console_script(block.code) if block.language == "console" else block.code)


# ---- running a page --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PageRun:
    """Runs a page's blocks in order in ``workdir``; ``stop_servers`` stops the servers it started."""

    page: Page
    workdir: Path
    namespace: dict = field(default_factory=lambda: {"__name__": "__doc__"})
    servers: dict[int, subprocess.Popen] = field(default_factory=dict)  # by the line of the block that started it
    fills: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from anygen.assets import DEFAULT_MODEL

        self.fills = {"{port}": str(free_port()), "{model}": str(DEFAULT_MODEL)}
        for name in CHECKOUT:
            (self.workdir / name).symlink_to(REPO / name, target_is_directory=True)

    def fill(self, text: str) -> str:
        for key, value in self.fills.items():
            text = text.replace(key, value)
        return text

    def prepared(self, block: Block) -> str:
        code = block.code
        for action in (*self.page.actions, *block.actions):
            if action.kind == "replace":
                if action.args["old"] not in code and action in block.actions:
                    raise AssertionError(f"{block.where}: `{action.args['old']}` (a replace directive) is not in it")
                code = code.replace(action.args["old"], self.fill(action.args["new"]))
        return code

    def run(self, include_slow: bool) -> None:
        for action in self.page.actions:
            if action.kind == "replace" and not any(action.args["old"] in b.code for b in self.page.runnable()):
                raise AssertionError(f"{shown(self.page.path)}: `{action.args['old']}` (a test-page replace) "
                                     "is in no block")
        for block in self.page.runnable():
            if block.reason_not_run():
                print(f"{block.where}: not run: {block.reason_not_run()}")
            elif block.slow_reason and not include_slow:
                print(f"{block.where}: slow, not run without -m slow: {block.slow_reason}")
            elif block.language == "python":
                self.run_python(block)
            else:
                self.run_shell(block)

    def run_python(self, block: Block) -> None:
        print(f"---- {block.where} (python)")
        # Padding keeps the page's own line numbers, so a traceback points into the Markdown file.
        source = "\n" * (block.line - 1) + self.prepared(block)
        exec(compile(source, str(block.page), "exec"), self.namespace)  # noqa: S102 - the page's own code

    def run_shell(self, block: Block) -> None:
        actions = block.actions
        for command in commands(dataclasses.replace(block, code=self.prepared(block))):
            if any(a.kind == "drop" and command.startswith(a.args["prefix"]) for a in actions):
                print(f"{block.where}: not run: {command}")
                continue
            for action in actions:
                if action.kind == "append" and command.startswith(action.args.get("prefix", "")):
                    command += " " + self.fill(action.args["args"])
            server = next((a.args["url"] for a in actions if a.kind == "server"), None)
            if server:
                self.start_server(block, command, self.fill(server))
            else:
                self.run_command(block, command)

    def environment(self) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}

    def run_command(self, block: Block, command: str) -> None:
        print(f"---- {block.where} $ {command}")
        started = time.monotonic()
        done = subprocess.run(["bash", "-o", "pipefail", "-ec", command], cwd=self.workdir, env=self.environment(),
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        print(done.stdout[-4000:], done.stderr[-4000:], f"({time.monotonic() - started:.1f} s)", sep="\n")
        if done.returncode:
            raise AssertionError(f"{block.where}: `{command}` exited with {done.returncode}:\n{done.stderr[-3000:]}")

    def start_server(self, block: Block, command: str, url: str) -> None:
        """Starts ``command`` in its own process group and waits until ``url`` answers; an earlier server of the same
        block (the same service, another way to start it) is stopped first."""
        print(f"---- {block.where} $ {command} &  (waiting for {url})")
        self.stop_servers(block.line)
        log = open(self.workdir / f".server-{block.line}.log", "w+")  # noqa: SIM115 - read back on failure
        server = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.workdir, env=self.environment(),
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.servers[block.line] = server
        deadline = time.monotonic() + SERVER_TIMEOUT
        while time.monotonic() < deadline and server.poll() is None:
            if answers(url):
                return
            time.sleep(0.5)
        log.seek(0)
        raise AssertionError(f"{block.where}: `{command}` did not answer at {url}:\n{log.read()[-3000:]}")

    def stop_servers(self, line: int | None = None) -> None:
        """Stops the server started by the block at ``line``, or every server."""
        for key in [k for k in self.servers if line in (None, k)]:
            server = self.servers.pop(key)
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a local test server
            return response.status == 200
    except OSError:
        return False


def run_page(path: Path, workdir: Path, include_slow: bool = True) -> None:
    """The blocks of the page at ``path`` (without its slow ones unless ``include_slow``), in order, in ``workdir``
    (the caller makes it the working directory)."""
    run = PageRun(parse_page(path), workdir)
    try:
        run.run(include_slow)
    finally:
        run.stop_servers()
