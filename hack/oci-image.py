#!/usr/bin/env python3
"""Packs a single-layer container image from files on this machine, without Docker or a registry.

The output is a docker-archive tarball (what `docker save` writes: manifest.json, a config JSON
and one layer.tar), which `ctr -n k8s.io images import` and `docker load` both read. The layer is
reproducible (sorted entries, fixed mtime, uid/gid from the options), so the same inputs give the
same image ID and a re-import is a no-op.

  hack/oci-image.py -o pause.tar -t localhost/pause:hookline \\
      --file /pause=/tmp/pause --entrypoint /pause

Contents options (each may repeat; they can also be listed in a file given with --contents, one
option a line without the leading dashes, lines starting with `#` ignored, e.g. `file /etc/passwd=hack/image/passwd`;
`${NAME}` in a line is replaced by the value of `--var NAME=VALUE`, and is an error without one):
  --file DEST=SRC[,mode=0755][,uid=0][,gid=0]   SRC a file (or a directory, copied recursively)
  --binary DEST=SRC[,...]                       as --file, plus the shared libraries and the ELF
                                                interpreter SRC needs (from ldd), each at its path
  --dir DEST[,mode=1777][,uid=0][,gid=0]        an empty directory
  --text DEST=CONTENT[,...]                     a small file written from the option (\\n escapes)
  --symlink DEST=TARGET
Parent directories are created as root-owned 0755.

The image's configuration options (--entrypoint, --cmd, --user, --workdir, --env, --port, --label)
may be lines of a --contents file too, so one file can describe a whole image
(hack/image.contents). A flag given on the command line replaces a single-valued line
(entrypoint, cmd, user, workdir) and adds to the repeatable ones (env, port, label).
"""
import argparse
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile

MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def parse_spec(value, want_src=True):
    """'DEST=SRC,mode=0755,uid=1' -> (dest, src, attrs)."""
    head, *opts = value.split(",")
    attrs = {}
    for o in opts:
        k, _, v = o.partition("=")
        if k not in ("mode", "uid", "gid"):
            sys.exit(f"oci-image: unknown attribute {k!r} in {value!r}")
        attrs[k] = int(v, 8) if k == "mode" else int(v)
    if want_src:
        dest, sep, src = head.partition("=")
        if not sep:
            sys.exit(f"oci-image: expected DEST=SRC, got {value!r}")
    else:
        dest, src = head, None
    if not dest.startswith("/"):
        sys.exit(f"oci-image: destination must be absolute: {dest!r}")
    return dest.rstrip("/") or "/", src, attrs


CONTENTS = ("file", "binary", "dir", "text", "symlink")
CONFIG_SINGLE = ("entrypoint", "cmd", "user", "workdir")
CONFIG_MULTI = ("env", "port", "label")


def substitute(line, variables, where):
    """Replaces each ${NAME} in LINE by its --var value; an unknown NAME is an error."""
    def value(m):
        if m.group(1) not in variables:
            sys.exit(f"oci-image: {where}: ${{{m.group(1)}}} needs --var {m.group(1)}=VALUE")
        return variables[m.group(1)]
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value, line)


def shared_libs(path):
    """The absolute paths of the libraries (and ELF interpreter) that `ldd PATH` resolves."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    if out.returncode != 0 or "not a dynamic executable" in out.stdout + out.stderr:
        return []
    libs = []
    for line in out.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            libs.append(m.group(1))
        elif "not found" in line:
            sys.exit(f"oci-image: {path}: {line.strip()}")
    return libs


class Layer:
    def __init__(self):
        self.entries = {}  # dest path (no leading /) -> TarInfo factory args

    def _parents(self, dest):
        parts = dest.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            self.entries.setdefault(p, ("dir", None, {"mode": 0o755}))

    def add(self, kind, dest, src, attrs):
        name = dest.strip("/")
        if not name:
            return
        self._parents(dest)
        self.entries[name] = (kind, src, attrs)

    def add_tree(self, dest, src, attrs):
        """A file, or a directory copied recursively (regular files, dirs and symlinks)."""
        if os.path.isdir(src) and not os.path.islink(src):
            self.add("dir", dest, None, {**attrs, "mode": attrs.get("mode", 0o755)})
            for entry in sorted(os.listdir(src)):
                self.add_tree(f"{dest}/{entry}", os.path.join(src, entry), {
                    k: v for k, v in attrs.items() if k != "mode"})
        elif os.path.islink(src):
            self.add("symlink", dest, os.readlink(src), attrs)
        elif os.path.isfile(src):
            self.add("file", dest, src, attrs)
        else:
            sys.exit(f"oci-image: no such file: {src}")

    def write(self, out):
        """Writes the layer tar to the binary file OUT, streaming file contents."""
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self.entries):
                kind, src, attrs = self.entries[name]
                info = tarfile.TarInfo(name)
                info.mtime = MTIME
                info.uid, info.gid = attrs.get("uid", 0), attrs.get("gid", 0)
                if kind == "dir":
                    info.type, info.mode = tarfile.DIRTYPE, attrs.get("mode", 0o755)
                    tar.addfile(info)
                elif kind == "symlink":
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, src, 0o777
                    tar.addfile(info)
                elif kind == "text":
                    data = src.encode()
                    info.mode, info.size = attrs.get("mode", 0o644), len(data)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    st = os.stat(src)
                    info.mode = attrs.get("mode", 0o755 if st.st_mode & 0o111 else 0o644)
                    info.size = st.st_size
                    with open(src, "rb") as f:
                        tar.addfile(info, f)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True, help="the docker-archive tarball to write")
    ap.add_argument("-t", "--tag", action="append", required=True, help="repository:tag (repeatable)")
    ap.add_argument("--contents", action="append", default=[], help="a file of contents options")
    for opt in ("file", "binary", "dir", "text", "symlink"):
        ap.add_argument(f"--{opt}", action="append", default=[], dest=opt)
    ap.add_argument("--entrypoint", help="a JSON list or a plain command line")
    ap.add_argument("--cmd", help="a JSON list or a plain command line")
    ap.add_argument("--user", help="uid[:gid] the process runs as")
    ap.add_argument("--workdir")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE")
    ap.add_argument("--port", action="append", default=[], help="8080/tcp")
    ap.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    ap.add_argument("--arch", default="amd64")
    ap.add_argument("--var", action="append", default=[], help="NAME=VALUE for ${NAME} in --contents files")
    args = ap.parse_args()
    variables = {}
    for v in args.var:
        name, sep, value = v.partition("=")
        if not sep:
            sys.exit(f"oci-image: expected --var NAME=VALUE, got {v!r}")
        variables[name] = value

    # Lines of --contents files are the same options; they go first, so flags can add to them.
    items = []
    settings = {opt: None for opt in CONFIG_SINGLE} | {opt: [] for opt in CONFIG_MULTI}
    for path in args.contents:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                line = substitute(line, variables, f"{path}:{number}")
                opt, _, value = line.partition(" ")
                value = value.strip()
                if opt in CONTENTS:
                    items.append((opt, value))
                elif opt in CONFIG_SINGLE:
                    if settings[opt] is not None:
                        sys.exit(f"oci-image: {path}:{number}: {opt} given twice")
                    settings[opt] = value
                elif opt in CONFIG_MULTI:
                    settings[opt].append(value)
                else:
                    sys.exit(f"oci-image: {path}:{number}: unknown option {opt!r}")
    for opt in CONTENTS:
        items += [(opt, v) for v in getattr(args, opt)]
    for opt in CONFIG_SINGLE:
        if getattr(args, opt) is not None:
            settings[opt] = getattr(args, opt)
    for opt in CONFIG_MULTI:
        settings[opt] += getattr(args, opt)

    layer = Layer()
    for opt, value in items:
        if opt == "dir":
            dest, _, attrs = parse_spec(value, want_src=False)
            layer.add("dir", dest, None, attrs)
        elif opt == "text":
            dest, _, rest = value.partition("=")
            layer.add("text", dest, rest.encode().decode("unicode_escape"), {})
        elif opt == "symlink":
            dest, _, target = value.partition("=")
            layer.add("symlink", dest, target, {})
        else:
            dest, src, attrs = parse_spec(value)
            layer.add_tree(dest, src, attrs)
            if opt == "binary":
                for lib in shared_libs(src):
                    # The real file, at the path the loader looks for (symlinks resolved).
                    layer.add("file", lib, os.path.realpath(lib), {})

    tmp = args.output + ".tmp"
    layer_path = tmp + ".layer"
    with open(layer_path, "wb") as f:
        layer.write(f)
    diff_id = sha256_file(layer_path)
    layer_size = os.path.getsize(layer_path)

    def command(v):
        if v is None:
            return None
        return json.loads(v) if v.lstrip().startswith("[") else shlex.split(v)

    cfg = {k: v for k, v in {
        "Entrypoint": command(settings["entrypoint"]),
        "Cmd": command(settings["cmd"]),
        "User": settings["user"],
        "WorkingDir": settings["workdir"],
        "Env": settings["env"] or ["PATH=/usr/local/bin:/usr/bin:/bin"],
        "ExposedPorts": {p: {} for p in settings["port"]} or None,
        "Labels": dict(lbl.split("=", 1) for lbl in settings["label"]) or None,
    }.items() if v is not None}
    config = json.dumps({
        "architecture": args.arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/oci-image.py"}],
    }, sort_keys=True, separators=(",", ":")).encode()
    config_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{
        "Config": f"{config_id}.json",
        "RepoTags": args.tag,
        "Layers": [f"{diff_id}/layer.tar"],
    }]).encode()

    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        info = tarfile.TarInfo(f"{diff_id}/layer.tar")
        info.size, info.mtime, info.mode = layer_size, MTIME, 0o644
        with open(layer_path, "rb") as f:
            out.addfile(info, f)
        for name, data in ((f"{config_id}.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            out.addfile(info, io.BytesIO(data))
    os.remove(layer_path)
    os.replace(tmp, args.output)
    print(f"oci-image: {args.output}: {', '.join(args.tag)} sha256:{config_id} "
          f"({len(layer.entries)} entries, {layer_size // 1024} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
