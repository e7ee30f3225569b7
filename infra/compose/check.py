#!/usr/bin/env python3
"""Check infra/docker-compose.yml and the Dockerfile without Docker.

Run through the wrapper `infra/compose/check` (it provides PyYAML and jsonschema in a virtualenv):

    infra/compose/check [--compose FILE] [--dockerfile FILE] [--bin-dir DIR]

Prints every problem, one per line, as `<file>: <where>: <what>` (`<where>` names the service and
the field, e.g. `services.speed.environment`), then exits 1; with no problem it prints what it
checked and exits 0. Exit 2: the files or the tools cannot be read at all.

What it checks:
  a. schema       the compose file (after interpolation) validates against the Compose
                  Specification's JSON schema, vendored next to this file as compose-spec.json
                  (github.com/compose-spec/compose-spec, schema/compose-spec.json at commit
                  00655e2222608fa6eaecdf12ac5195889ca2244a)
  b. images       every image (compose `image:` of a service that is not built here, Dockerfile
                  `FROM`) has an explicit tag or a digest, and not a floating one (`latest`, ...);
                  `${VAR:-default}` is checked on its default
  c. references   depends_on / links / volumes_from / extends / network_mode name services of the
                  file; named volumes, networks, secrets and configs are declared; a condition
                  fits its target (service_healthy: a health check; service_completed_successfully:
                  a one-shot); a required dependency is enabled whenever its dependent is
                  (profiles); bind mounts, build contexts, Dockerfiles and env files exist
  d. environment  for each lambdalake service (its command or entrypoint runs a `lambdalake-*`
                  binary): every LAMBDALAKE_* variable and every --flag it sets is one the binary
                  reads (from `<bin-dir>/<binary> [subcommand] --help`), the options naming
                  infrastructure (brokers, URLs, listen addresses, dataset and tables locations)
                  and every required option are set, listen addresses are not loopback, health
                  checks probe the listen port, s3:// locations come with AWS credentials and the
                  Dockerfile builds the binary; and in the whole file, every `${VAR}` without a
                  default is a problem
  e. operations   a health check on every service that is not a one-shot (restart "no" or
                  "on-failure"); every host port published once; a service marked
                  `x-scalable: true` has no container_name and no fixed host port; the Dockerfile's
                  last stage copies the binaries into /usr/local/bin and runs as a non-root user
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCHEMA_FILE = HERE / "compose-spec.json"
SCHEMA_SOURCE = "compose-spec/compose-spec schema/compose-spec.json @ 00655e2222608fa6eaecdf12ac5195889ca2244a"

FLOATING_TAGS = {"latest", "stable", "edge", "nightly", "master", "main"}
# an option whose variable ends so names a place the service must reach or bind: never left to its
# default (the defaults point at the native local stack on 127.0.0.1)
INFRA_ENV = re.compile(r"_(BROKERS|URL|LISTEN|DATASET|TABLES)$")
LAMBDALAKE_BINARY = re.compile(r"^lambdalake-[a-z0-9-]+$")
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)

    def add(self, file: str, where: str, what: str) -> None:
        line = f"{file}: {where}: {what}" if where else f"{file}: {what}"
        if line not in self.problems:
            self.problems.append(line)


# ------------------------------------------------------------------------------------------------
# interpolation (Compose's `${VAR}`, `${VAR:-default}`, `$$`, ...) with every variable unset


def interpolate(text: str, where: str, file: str, report: Report) -> str:
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < n else ""
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("${", j):
                    depth += 1
                    j += 2
                    continue
                if text[j] == "}":
                    depth -= 1
                j += 1
            if depth:
                report.add(file, where, f"unterminated interpolation {q(text[i:])}")
                return "".join(out)
            out.append(_expand(text[i + 2 : j - 1], where, file, report))
            i = j
        else:
            m = VAR_NAME.match(text, i + 1)
            if m:
                report.add(file, where, f"${m.group(0)} has no default (write ${{{m.group(0)}:-value}})")
                i = m.end()
            else:
                out.append("$")
                i += 1
    return "".join(out)


def _expand(body: str, where: str, file: str, report: Report) -> str:
    m = VAR_NAME.match(body)
    name = m.group(0) if m else body
    rest = body[m.end() :] if m else ""
    for op in (":-", "-", ":+", "+", ":?", "?"):
        if rest.startswith(op):
            value = rest[len(op) :]
            if op in (":-", "-"):
                return interpolate(value, where, file, report)
            if op in (":+", "+"):
                return ""
            report.add(file, where, f"${{{name}{op}...}} has no default: the file fails when {name} is unset")
            return ""
    if rest:
        report.add(file, where, f"${{{body}}} is not a valid interpolation")
        return ""
    report.add(file, where, f"${{{name}}} has no default (write ${{{name}:-value}})")
    return ""


def interpolate_tree(node, where: str, file: str, report: Report):
    if isinstance(node, dict):
        return {k: interpolate_tree(v, f"{where}.{k}" if where else str(k), file, report) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, where, file, report) for v in node]
    if isinstance(node, str):
        return interpolate(node, where, file, report)
    return node


# ------------------------------------------------------------------------------------------------
# images


def q(value) -> str:
    """A value quoted for a problem line."""
    return json.dumps(str(value))


def image_problem(ref: str) -> str | None:
    """Why `ref` is not pinned, or None."""
    if not ref or not ref.strip():
        return "is empty (after interpolation)"
    if "@" in ref:
        digest = ref.split("@", 1)[1]
        return None if re.fullmatch(r"[a-z0-9]+:[0-9a-f]{32,}", digest) else f"{q(ref)} has a malformed digest"
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{q(ref)} has no tag: pin an explicit version (or a digest)"
    tag = last.split(":", 1)[1]
    if not tag:
        return f"{q(ref)} has an empty tag"
    if tag.lower() in FLOATING_TAGS:
        return f"{q(ref)} uses the floating tag {q(tag)}: pin an explicit version (or a digest)"
    return None


# ------------------------------------------------------------------------------------------------
# Dockerfile


@dataclass
class Stage:
    line: int
    image: str
    name: str | None
    instructions: list[tuple[int, str, str]] = field(default_factory=list)  # (line, KEYWORD, args)


@dataclass
class Dockerfile:
    path: Path
    stages: list[Stage]
    built: set[str]  # packages / binaries named in `cargo build`
    builds_all: bool


def parse_dockerfile(path: Path, shown: str, report: Report) -> Dockerfile | None:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        report.add(shown, "", f"cannot read the Dockerfile: {e}")
        return None
    instructions: list[tuple[int, str, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and (not stripped or stripped.startswith("#")):
            continue  # an empty line or a comment inside a continued instruction
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        text = " ".join(buf)
        buf = []
        keyword, _, args = text.partition(" ")
        instructions.append((start, keyword.upper(), args.strip()))
    if buf:
        text = " ".join(buf)
        keyword, _, args = text.partition(" ")
        instructions.append((start, keyword.upper(), args.strip()))

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    built: set[str] = set()
    builds_all = False
    for number, keyword, args in instructions:
        if keyword == "ARG" and not stages:
            for item in shlex.split(args):
                name, _, default = item.partition("=")
                global_args[name] = default
            continue
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            if not words:
                report.add(shown, f"line {number}", "FROM without an image")
                continue
            image = _substitute_args(words[0], global_args)
            name = words[2].lower() if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(number, image, name))
            continue
        if not stages:
            continue
        stages[-1].instructions.append((number, keyword, args))
        if keyword == "RUN" and re.search(r"\bcargo\s+(build|install)\b", args):
            try:
                words = shlex.split(args.replace(";", " ; "))
            except ValueError:
                words = args.split()
            for k, w in enumerate(words):
                if w in ("-p", "--package", "--bin") and k + 1 < len(words):
                    built.add(words[k + 1])
                elif w.startswith(("--package=", "--bin=")):
                    built.add(w.split("=", 1)[1])
                elif w in ("--workspace", "--all", "--bins"):
                    builds_all = True

    if not stages:
        report.add(shown, "", "no FROM instruction")
    names = {s.name for s in stages if s.name}
    for stage in stages:
        ref = stage.image
        if ref.lower() in names or ref == "scratch":
            continue
        why = image_problem(ref)
        if why:
            report.add(shown, f"line {stage.line}", f"FROM {why}")
    if stages:
        final = stages[-1]
        copies = [
            (n, a)
            for n, k, a in final.instructions
            if k == "COPY" and "--from=" in a and re.search(r"\s/usr/local/bin/?$", a)
        ]
        if not copies:
            report.add(shown, f"line {final.line}", "the final stage copies no binaries into /usr/local/bin (COPY --from=<build stage> ... /usr/local/bin/)")
        users = [a.split()[0] for _, k, a in final.instructions if k == "USER" and a.split()]
        if not users or users[-1].split(":")[0] in ("root", "0"):
            report.add(shown, f"line {final.line}", "the final stage runs as root: add a USER with a non-root user")
    return Dockerfile(path, stages, built, builds_all)


def _substitute_args(word: str, args: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        default = m.group(2)
        value = args.get(name, "")
        return value if value else (default or "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, word)


# ------------------------------------------------------------------------------------------------
# a binary's --help (clap)


@dataclass
class Option:
    flag: str
    takes_value: bool
    env: str | None
    has_default: bool


@dataclass
class Help:
    options: dict[str, Option]  # by flag
    commands: list[str]
    required_flags: set[str]

    @property
    def envs(self) -> dict[str, Option]:
        return {o.env: o for o in self.options.values() if o.env}


OPTION_HEADER = re.compile(r"^ {2,6}(?:-[A-Za-z0-9], )?--([A-Za-z0-9][A-Za-z0-9-]*)(?:[ =](<[^>]+>|\[<[^>]+>\]))?")


def parse_help(text: str) -> Help:
    options: dict[str, Option] = {}
    commands: list[str] = []
    required: set[str] = set()
    lines = text.splitlines()
    usage = next((l for l in lines if l.startswith("Usage:")), "")
    for flag in re.findall(r"--([a-z0-9][a-z0-9-]*)", re.sub(r"\[[^\]]*\]", "", usage)):
        required.add(flag)
    section = ""
    block: list[str] = []
    current: tuple[str, bool] | None = None

    def close() -> None:
        if current is None:
            return
        flag, takes_value = current
        body = "\n".join(block)
        env = re.search(r"\[env: ([A-Z0-9_]+)", body)
        options[flag] = Option(flag, takes_value, env.group(1) if env else None, "[default: " in body)

    for line in lines:
        if line and not line.startswith(" "):
            close()
            current, block = None, []
            section = line.rstrip(":")
            continue
        if section == "Commands":
            m = re.match(r"^  ([a-z][a-z0-9-]*)(\s|$)", line)
            if m and m.group(1) != "help":
                commands.append(m.group(1))
            continue
        m = OPTION_HEADER.match(line)
        if m:
            close()
            current, block = (m.group(1), m.group(2) is not None), [line]
        elif current is not None:
            block.append(line)
    close()
    return Help(options, commands, required)


class Binaries:
    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.cache: dict[tuple[str, ...], Help | str] = {}

    def help(self, binary: str, sub: tuple[str, ...] = ()) -> Help | str:
        key = (binary, *sub)
        if key not in self.cache:
            self.cache[key] = self._run(binary, sub)
        return self.cache[key]

    def _run(self, binary: str, sub: tuple[str, ...]) -> Help | str:
        path = self.bin_dir / binary
        if not path.is_file():
            return f"{binary} is not in {self.bin_dir} (build it: cargo build -p {binary}; or pass --bin-dir)"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"), "LANG": "C"}
        try:
            done = subprocess.run([str(path), *sub, "--help"], capture_output=True, text=True, timeout=60, env=env)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"cannot run {path} {' '.join(sub)} --help: {e}"
        if done.returncode != 0:
            return f"{path} {' '.join(sub)} --help exited with {done.returncode}: {done.stderr.strip()[:200]}"
        return parse_help(done.stdout)


# ------------------------------------------------------------------------------------------------
# the compose file


def as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def argv_of(service: dict) -> list[str]:
    argv: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if isinstance(value, str):
            try:
                argv += shlex.split(value)
            except ValueError:
                argv += value.split()
        elif isinstance(value, list):
            argv += [str(v) for v in value]
    return argv


def environment_of(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {str(k): (None if v is None else str(v).lower() if isinstance(v, bool) else str(v)) for k, v in env.items()}
    out: dict[str, str | None] = {}
    for item in env:
        name, sep, value = str(item).partition("=")
        out[name] = value if sep else None
    return out


def is_one_shot(service: dict) -> bool:
    restart = service.get("restart")
    if restart is False:
        return True
    return isinstance(restart, str) and (restart == "no" or restart.startswith("on-failure"))


def has_healthcheck(service: dict) -> bool:
    hc = service.get("healthcheck")
    if not isinstance(hc, dict) or hc.get("disable") in (True, "true"):
        return False
    test = hc.get("test")
    if test is None:
        return False
    if isinstance(test, list):
        return bool(test) and test[0] != "NONE"
    return bool(str(test).strip())


def depends_on_items(service: dict) -> list[tuple[str, str, bool]]:
    deps = service.get("depends_on") or []
    if isinstance(deps, list):
        return [(str(d), "service_started", True) for d in deps]
    items = []
    for name, spec in deps.items():
        spec = spec or {}
        required = spec.get("required", True)
        items.append((str(name), str(spec.get("condition", "service_started")), required not in (False, "false")))
    return items


def parse_ports(value) -> list[tuple[str, int, str]]:
    """Published (host ip, host port, protocol) of one `ports` item; [] when no fixed host port."""
    if isinstance(value, dict):
        published = value.get("published")
        if published in (None, ""):
            return []
        ip = str(value.get("host_ip") or "")
        proto = str(value.get("protocol") or "tcp")
        return [(ip, p, proto) for p in _port_range(str(published))]
    if isinstance(value, int):
        return []
    text = str(value)
    proto = "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
    ip = ""
    if text.startswith("["):
        ip, _, text = text[1:].partition("]:")
    parts = text.split(":")
    if len(parts) == 1:
        return []
    if len(parts) == 3:
        ip, host = parts[0], parts[1]
    else:
        host = parts[0]
    if not host:
        return []
    return [(ip, p, proto) for p in _port_range(host)]


def _port_range(text: str) -> list[int]:
    try:
        if "-" in text:
            lo, hi = text.split("-", 1)
            return list(range(int(lo), int(hi) + 1))
        return [int(text)]
    except ValueError:
        return []


class ComposeCheck:
    def __init__(self, compose: Path, shown: str, dockerfile: Dockerfile | None, binaries: Binaries, report: Report):
        self.path = compose
        self.dir = compose.parent
        self.shown = shown
        self.dockerfile = dockerfile
        self.binaries = binaries
        self.report = report
        self.stats: dict[str, object] = {}

    def problem(self, where: str, what: str) -> None:
        self.report.add(self.shown, where, what)

    def run(self) -> None:
        try:
            raw = yaml.safe_load(self.path.read_text())
        except (OSError, yaml.YAMLError) as e:
            self.problem("", f"cannot read the compose file: {e}")
            return
        if not isinstance(raw, dict):
            self.problem("", "not a YAML mapping")
            return
        doc = interpolate_tree(raw, "", self.shown, self.report)
        self.check_schema(doc)
        services = doc.get("services") or {}
        if not isinstance(services, dict) or not services:
            self.problem("services", "no services")
            return
        self.services = {str(k): (v if isinstance(v, dict) else {}) for k, v in services.items()}
        self.doc = doc
        self.check_images()
        self.check_references()
        self.check_environment()
        self.check_operations()

    # a
    def check_schema(self, doc: dict) -> None:
        schema = json.loads(SCHEMA_FILE.read_text())
        validator = jsonschema.Draft7Validator(schema)
        errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
        for error in errors:
            where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
            message = error.message if len(error.message) < 300 else error.message[:300] + "..."
            self.problem(where, f"schema: {message}")
        self.stats["schema"] = not errors

    # b
    def check_images(self) -> None:
        pinned = []
        for name, svc in self.services.items():
            image = svc.get("image")
            if "build" in svc:
                continue  # built from this repository: its image is the name given to the build
            if image is None:
                self.problem(f"services.{name}", "neither image nor build")
                continue
            why = image_problem(str(image))
            if why:
                self.problem(f"services.{name}.image", why)
            else:
                pinned.append(str(image))
        self.stats["images"] = sorted(set(pinned))

    # c
    def check_references(self) -> None:
        services = self.services
        declared = {kind: set((self.doc.get(kind) or {}).keys()) for kind in ("volumes", "networks", "secrets", "configs")}
        n_deps = n_paths = 0
        for name, svc in services.items():
            base = f"services.{name}"
            profiles = set(as_list(svc.get("profiles")))
            for target, condition, required in depends_on_items(svc):
                n_deps += 1
                if target not in services:
                    self.problem(f"{base}.depends_on", f"{q(target)} is not a service in this file")
                    continue
                other = services[target]
                if condition == "service_healthy" and not has_healthcheck(other):
                    self.problem(f"{base}.depends_on", f"condition service_healthy on {q(target)}, which has no healthcheck")
                if condition == "service_completed_successfully" and not is_one_shot(other):
                    self.problem(
                        f"{base}.depends_on",
                        f"condition service_completed_successfully on {q(target)}, which is long-running (a one-shot says restart: \"no\")",
                    )
                target_profiles = set(as_list(other.get("profiles")))
                if required and target_profiles and not (profiles and profiles <= target_profiles):
                    self.problem(
                        f"{base}.depends_on",
                        f"{q(target)} only runs with profile {', '.join(sorted(target_profiles))} but {q(name)} "
                        f"{'runs without it' if not profiles else 'has other profiles'}: mark the dependency required: false",
                    )
            for link in as_list(svc.get("links")):
                target = str(link).split(":", 1)[0]
                if target not in services:
                    self.problem(f"{base}.links", f"{q(target)} is not a service in this file")
            for source in as_list(svc.get("volumes_from")):
                source = str(source)
                if source.startswith("container:"):
                    continue
                target = source.split(":", 1)[0]
                if target not in services:
                    self.problem(f"{base}.volumes_from", f"{q(target)} is not a service in this file")
            extends = svc.get("extends")
            if isinstance(extends, str) and extends not in services:
                self.problem(f"{base}.extends", f"{q(extends)} is not a service in this file")
            elif isinstance(extends, dict):
                if extends.get("file"):
                    n_paths += 1
                    if not (self.dir / str(extends["file"])).is_file():
                        self.problem(f"{base}.extends", f"file {q(extends['file'])} does not exist")
                elif extends.get("service") not in services:
                    self.problem(f"{base}.extends", f"{q(extends.get('service'))} is not a service in this file")
            for key in ("network_mode", "ipc", "pid"):
                value = svc.get(key)
                if isinstance(value, str) and value.startswith("service:") and value[8:] not in services:
                    self.problem(f"{base}.{key}", f"{q(value[8:])} is not a service in this file")
            networks = svc.get("networks") or []
            for net in networks if isinstance(networks, list) else networks.keys():
                if net != "default" and net not in declared["networks"]:
                    self.problem(f"{base}.networks", f"network {q(net)} is not declared under the top-level networks")
            for kind in ("secrets", "configs"):
                for item in as_list(svc.get(kind)):
                    source = item.get("source") if isinstance(item, dict) else item
                    if source not in declared[kind]:
                        self.problem(f"{base}.{kind}", f"{q(source)} is not declared under the top-level {kind}")
            for volume in as_list(svc.get("volumes")):
                n_paths += self._check_volume(base, volume, declared["volumes"])
            build = svc.get("build")
            if build is not None:
                n_paths += 1
                spec = {"context": build} if isinstance(build, str) else build
                context = str(spec.get("context", "."))
                if "://" in context or context.startswith("git@"):
                    continue
                cdir = (self.dir / context).resolve()
                if not cdir.is_dir():
                    self.problem(f"{base}.build.context", f"{q(context)} is not a directory (relative to {shown_path(self.dir)}/)")
                elif "dockerfile_inline" not in spec:
                    dockerfile = str(spec.get("dockerfile", "Dockerfile"))
                    if not (cdir / dockerfile).is_file():
                        self.problem(f"{base}.build.dockerfile", f"{q(dockerfile)} does not exist in the build context {q(context)}")
            for item in as_list(svc.get("env_file")):
                path, required = (item, True) if isinstance(item, str) else (item.get("path"), item.get("required", True))
                n_paths += 1
                if required not in (False, "false") and not (self.dir / str(path)).is_file():
                    self.problem(f"{base}.env_file", f"{q(path)} does not exist")
        for kind in ("secrets", "configs"):
            for key, spec in (self.doc.get(kind) or {}).items():
                if isinstance(spec, dict) and spec.get("file"):
                    n_paths += 1
                    if not (self.dir / str(spec["file"])).exists():
                        self.problem(f"{kind}.{key}.file", f"{q(spec['file'])} does not exist")
        self.stats["depends_on"] = n_deps
        self.stats["paths"] = n_paths

    def _check_volume(self, base: str, volume, declared: set[str]) -> int:
        if isinstance(volume, dict):
            kind, source = volume.get("type"), volume.get("source")
            if kind == "volume" and source and source not in declared:
                self.problem(f"{base}.volumes", f"named volume {q(source)} is not declared under the top-level volumes")
            if kind == "bind" and source:
                return self._check_bind(base, str(source))
            return 0
        parts = str(volume).split(":")
        if len(parts) < 2:
            return 0  # an anonymous volume
        source = parts[0]
        if source.startswith((".", "/", "~")):
            return self._check_bind(base, source)
        if source not in declared:
            self.problem(f"{base}.volumes", f"named volume {q(source)} is not declared under the top-level volumes")
        return 0

    def _check_bind(self, base: str, source: str) -> int:
        path = Path(os.path.expanduser(source))
        if not path.is_absolute():
            path = self.dir / path
        if not path.exists():
            self.problem(f"{base}.volumes", f"bind mount source {q(source)} does not exist (relative to {shown_path(self.dir)}/)")
        return 1

    # d
    def check_environment(self) -> None:
        checked = []
        for name, svc in self.services.items():
            base = f"services.{name}"
            argv = argv_of(svc)
            if not argv or not LAMBDALAKE_BINARY.match(os.path.basename(argv[0])):
                continue
            binary = os.path.basename(argv[0])
            field_ = "entrypoint" if svc.get("entrypoint") else "command"
            if self.dockerfile is not None and not self.dockerfile.builds_all and binary not in self.dockerfile.built:
                self.problem(f"{base}.{field_}", f"the Dockerfile ({self.dockerfile.path.name}) does not build {binary}")
            top = self.binaries.help(binary)
            if isinstance(top, str):
                self.problem(f"{base}.{field_}", top)
                continue
            helps = [top]
            args = argv[1:]
            sub = self._subcommand(top, args)
            if sub:
                sub_help = self.binaries.help(binary, (sub,))
                if isinstance(sub_help, str):
                    self.problem(f"{base}.{field_}", sub_help)
                    continue
                helps.append(sub_help)
            options = {f: o for h in helps for f, o in h.options.items()}
            envs = {e: o for h in helps for e, o in h.envs.items()}
            required = {f for h in helps for f in h.required_flags}
            program = " ".join([binary, *([sub] if sub else [])])
            flags_set = set()
            for arg in args:
                if arg.startswith("--"):
                    flag = arg[2:].split("=", 1)[0]
                    flags_set.add(flag)
                    if flag not in options:
                        self.problem(f"{base}.{field_}", f"--{flag} is not an option of {program}")
            env = environment_of(svc)
            for var in env:
                if var.startswith("LAMBDALAKE_") and var not in envs:
                    close = difflib.get_close_matches(var, list(envs), n=1, cutoff=0.8)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    self.problem(f"{base}.environment", f"{var} is not read by {program}{hint}")
            for option in options.values():
                is_set = option.flag in flags_set or (option.env is not None and env.get(option.env) not in (None, ""))
                if is_set:
                    continue
                if option.flag in required:
                    what = option.env or f"--{option.flag}"
                    self.problem(f"{base}.environment", f"{what} is not set and {program} requires it")
                elif option.env and INFRA_ENV.search(option.env):
                    self.problem(
                        f"{base}.environment",
                        f"{option.env} is not set: {program} would use its default, the native local stack's",
                    )
            self._check_listen(base, svc, env, envs)
            self._check_s3(base, env)
            checked.append(program)
        self.stats["lambdalake"] = checked

    @staticmethod
    def _subcommand(help_: Help, args: list[str]) -> str | None:
        k = 0
        while k < len(args):
            arg = args[k]
            if arg.startswith("--"):
                option = help_.options.get(arg[2:].split("=", 1)[0])
                k += 2 if option and option.takes_value and "=" not in arg else 1
                continue
            if arg.startswith("-"):
                k += 1
                continue
            return arg if arg in help_.commands else None
        return None

    def _check_listen(self, base: str, svc: dict, env: dict, envs: dict) -> None:
        for var, value in env.items():
            if not var.endswith("_LISTEN") or var not in envs or not value:
                continue
            host, _, port = value.rpartition(":")
            if host.strip("[]") in ("127.0.0.1", "localhost", "::1"):
                self.problem(f"{base}.environment", f"{var}={value} listens on loopback: Prometheus and the other containers cannot reach it")
            test = (svc.get("healthcheck") or {}).get("test")
            text = " ".join(test) if isinstance(test, list) else str(test or "")
            for probed in re.findall(r"https?://(?:127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1\]):(\d+)", text):
                if probed != port:
                    self.problem(f"{base}.healthcheck", f"probes port {probed} but {var} is {value}")

    def _check_s3(self, base: str, env: dict) -> None:
        if not any(isinstance(v, str) and v.startswith("s3://") for v in env.values()):
            return
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if not env.get(var):
                self.problem(f"{base}.environment", f"{var} is not set but a location is on s3://")
        if not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
            self.problem(f"{base}.environment", "AWS_REGION is not set but a location is on s3://")
        endpoint = env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT") or ""
        if endpoint.startswith("http://") and str(env.get("AWS_ALLOW_HTTP", "")).lower() != "true":
            self.problem(f"{base}.environment", f"AWS_ENDPOINT_URL is {endpoint} (plain HTTP) but AWS_ALLOW_HTTP is not true")

    # e
    def check_operations(self) -> None:
        published: dict[tuple[int, str], list[tuple[str, str]]] = {}
        one_shots, long_running = [], []
        for name, svc in self.services.items():
            base = f"services.{name}"
            if is_one_shot(svc):
                one_shots.append(name)
            else:
                long_running.append(name)
                if not has_healthcheck(svc):
                    self.problem(f"{base}.healthcheck", 'missing: every long-running service needs one (a one-shot says restart: "no")')
            scalable = svc.get("x-scalable") in (True, "true")
            if scalable and svc.get("container_name"):
                self.problem(f"{base}.container_name", "is set on a service marked x-scalable: a second replica could not be named")
            for item in as_list(svc.get("ports")):
                for ip, port, proto in parse_ports(item):
                    if scalable:
                        self.problem(f"{base}.ports", f"publishes host port {port} on a service marked x-scalable: a second replica could not bind it")
                    for other, other_ip in published.get((port, proto), []):
                        if other_ip == ip or not other_ip or not ip or other_ip in ("0.0.0.0", "::") or ip in ("0.0.0.0", "::"):
                            where = "it" if other == name else f"services.{other}"
                            self.problem(f"{base}.ports", f"host port {port}/{proto} is also published by {where}")
                            break
                    published.setdefault((port, proto), []).append((name, ip))
        self.stats["one_shots"] = one_shots
        self.stats["long_running"] = long_running
        self.stats["ports"] = sum(len(v) for v in published.values())


def default_bin_dir() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        return Path(target) / "debug"
    return Path.home() / ".cache" / "lambdalake" / "target" / "debug"


def shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description="Check the compose file and the Dockerfile without Docker.")
    parser.add_argument("--compose", type=Path, default=REPO / "infra" / "docker-compose.yml")
    parser.add_argument("--dockerfile", type=Path, default=REPO / "Dockerfile")
    parser.add_argument("--bin-dir", type=Path, default=None, help="where the lambdalake-* binaries are (default: $CARGO_TARGET_DIR/debug or ~/.cache/lambdalake/target/debug)")
    args = parser.parse_args()
    bin_dir = args.bin_dir or default_bin_dir()

    for path in (args.compose, args.dockerfile):
        if not path.is_file():
            print(f"compose-check: {path} does not exist", file=sys.stderr)
            return 2

    report = Report()
    dockerfile = parse_dockerfile(args.dockerfile, shown_path(args.dockerfile), report)
    check = ComposeCheck(args.compose, shown_path(args.compose), dockerfile, Binaries(bin_dir), report)
    check.run()

    if report.problems:
        for line in report.problems:
            print(line)
        print(f"compose-check: {len(report.problems)} problem(s)", file=sys.stderr)
        return 1

    s = check.stats
    froms = [st.image for st in dockerfile.stages] if dockerfile else []
    print(f"compose-check: no problems in {check.shown} and {shown_path(args.dockerfile)}")
    print(f"  a. schema: valid against the Compose Specification ({SCHEMA_SOURCE})")
    print(f"  b. images: {len(s['images'])} pinned in compose ({', '.join(s['images'])}); Dockerfile FROM {', '.join(froms)}")
    print(f"  c. references: {len(check.services)} services, {s['depends_on']} depends_on, {s['paths']} paths (bind mounts, build contexts, files) all resolve")
    print(f"  d. environment: {len(s['lambdalake'])} lambdalake services against their --help in {bin_dir} ({'; '.join(s['lambdalake'])}); no ${{VAR}} without a default")
    print(f"  e. operations: {len(s['long_running'])} long-running services with a health check, one-shots {', '.join(s['one_shots']) or 'none'}; {s['ports']} host ports, all distinct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
