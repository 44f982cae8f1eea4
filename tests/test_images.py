"""Self-tests for custom_ca_conformance.localplane.images: the OCI writer and keys (pure), and a real import into containerd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import tarfile
import time
from pathlib import Path

import pytest
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from custom_ca_conformance.localplane.images import binaries, containerd, oci, recipes, rootfs
from custom_ca_conformance.localplane.images.oci import DirEntry, FileEntry, HardlinkEntry, ImageConfig, ImageFormatError, SymlinkEntry

REF = "docker.io/custom-ca-conformance/test:1.0"


def _entries(tmp_path: Path) -> list:
    source = tmp_path / "source-binary"
    source.write_bytes(b"\x7fELF pretend")
    return [
        FileEntry("/usr/local/bin/tool", mode=0o755, source=source),
        FileEntry("etc/config.json", data=b"{}"),
        SymlinkEntry("bin", "usr/bin"),
        DirEntry("tmp", mode=0o1777),
        FileEntry("home/user/.profile", uid=1337, gid=1337, data=b"x"),
    ]


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


# --- layers ---------------------------------------------------------------------------------


def test_same_entries_give_the_same_layer_bytes(tmp_path):
    first = oci.write_layer(_entries(tmp_path), tmp_path / "a.tar")
    time.sleep(0.01)  # a different wall clock must not matter
    second = oci.write_layer(reversed(_entries(tmp_path)), tmp_path / "b.tar")
    assert first.digest == second.digest and first.size == second.size
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert first.digest == oci.file_digest(tmp_path / "a.tar")[0]


def test_layer_members_are_sorted_with_fixed_mtime_and_numeric_owners(tmp_path):
    layer = oci.write_layer(_entries(tmp_path), tmp_path / "layer.tar")
    members = _members(layer.path)
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.split("/"))
    # Parents were added as directories, before their content.
    assert names.index("usr") < names.index("usr/local") < names.index("usr/local/bin/tool")
    assert {m.mtime for m in members} == {oci.FIXED_MTIME}
    assert {(m.uname, m.gname) for m in members} == {("", "")}
    by_name = {m.name: m for m in members}
    assert by_name["usr/local/bin/tool"].mode == 0o755
    assert by_name["tmp"].mode == 0o1777 and by_name["tmp"].isdir()
    assert by_name["bin"].issym() and by_name["bin"].linkname == "usr/bin"
    assert (by_name["home/user/.profile"].uid, by_name["home/user/.profile"].gid) == (1337, 1337)


def test_paths_are_normalized_and_duplicates_refused():
    assert oci.normalize_path("/usr//bin/./x/") == "usr/bin/x"
    with pytest.raises(ImageFormatError):
        oci.normalize_path("../etc/passwd")
    with pytest.raises(ImageFormatError):
        oci.complete_entries([FileEntry("/a", data=b""), FileEntry("a", data=b"")])


def test_hard_link_needs_an_earlier_file():
    with pytest.raises(ImageFormatError):
        oci.complete_entries([HardlinkEntry("a", "b"), FileEntry("b", data=b"")])
    ordered = oci.complete_entries([HardlinkEntry("b", "a"), FileEntry("a", data=b"")])
    assert [e.path for e in ordered] == ["a", "b"]


def test_file_entry_takes_exactly_one_content():
    with pytest.raises(ImageFormatError):
        FileEntry("a")
    with pytest.raises(ImageFormatError):
        FileEntry("a", data=b"", source=Path("/etc/hostname"))


def test_directory_entries_keep_hard_links_and_empty_excluded_dirs(tmp_path):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "dev/null-ish").write_text("not a device")
    (root / "usr/bin/a").write_text("same")
    os.link(root / "usr/bin/a", root / "usr/bin/b")
    os.symlink("a", root / "usr/bin/c")
    entries = oci.directory_entries(root, exclude=["dev"])
    by_path = {e.path: e for e in entries}
    assert isinstance(by_path["dev"], DirEntry) and "dev/null-ish" not in by_path
    assert isinstance(by_path["usr/bin/a"], FileEntry)
    assert isinstance(by_path["usr/bin/b"], HardlinkEntry) and by_path["usr/bin/b"].target == "usr/bin/a"
    assert by_path["usr/bin/c"].target == "a"
    layer = oci.write_layer(entries, tmp_path / "tree.tar")
    link = {m.name: m for m in _members(layer.path)}["usr/bin/b"]
    assert link.islnk() and link.linkname == "usr/bin/a"


# --- image config, manifest, index, archive ---------------------------------------------------


def test_config_json_is_canonical_and_carries_the_runtime_settings():
    config = ImageConfig(entrypoint=("/usr/local/bin/pilot-agent",), cmd=("proxy",), env={"A": "1"},
                         working_dir="/work", user="1337:1337", exposed_ports=("8080/tcp",))
    raw = oci.image_config_json(config, ["sha256:" + "0" * 64])
    assert raw == oci.image_config_json(config, ["sha256:" + "0" * 64])
    document = json.loads(raw)
    runtime = document["config"]
    assert runtime["Entrypoint"] == ["/usr/local/bin/pilot-agent"] and runtime["Cmd"] == ["proxy"]
    assert runtime["Env"][0].startswith("PATH=") and runtime["Env"][1] == "A=1"
    assert (runtime["WorkingDir"], runtime["User"]) == ("/work", "1337:1337")
    assert runtime["ExposedPorts"] == {"8080/tcp": {}}
    assert document["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}
    assert (document["os"], document["architecture"], document["created"]) == ("linux", "amd64", oci.FIXED_CREATED)


def test_references_must_be_full_and_versioned():
    assert oci.parse_reference(REF) == {"domain": "docker.io", "path": "custom-ca-conformance/test", "tag": "1.0"}
    assert oci.parse_reference("localhost:5000/a/b:v1")["tag"] == "v1"
    for bad in ("test:1.0", "docker.io/custom-ca-conformance/test", "docker.io/x/y:latest", "docker.io/X/y:1"):
        with pytest.raises(ImageFormatError):
            oci.parse_reference(bad)


def test_archive_is_reproducible_and_self_consistent(tmp_path):
    layer = oci.write_layer(_entries(tmp_path), tmp_path / "layer.tar")
    config = ImageConfig(entrypoint=("/usr/local/bin/tool",))
    first = oci.write_oci_archive(REF, [layer], config, tmp_path / "one.oci.tar", history=["COPY tool"])
    second = oci.write_oci_archive(REF, [layer], config, tmp_path / "two.oci.tar", history=["COPY tool"])
    assert first.manifest_digest == second.manifest_digest
    assert (tmp_path / "one.oci.tar").read_bytes() == (tmp_path / "two.oci.tar").read_bytes()

    layout = oci.read_oci_archive(first.archive)
    [descriptor] = layout["index"]["manifests"]
    assert descriptor["digest"] == first.manifest_digest
    assert descriptor["annotations"] == {oci.CONTAINERD_IMAGE_NAME: REF, oci.OCI_REF_NAME: "1.0"}
    assert layout["manifest"]["layers"] == [{"mediaType": oci.LAYER_MEDIA_TYPE, "digest": layer.digest,
                                             "size": layer.size}]
    assert layout["manifest"]["config"]["digest"] == first.config_digest
    assert layout["config"]["rootfs"]["diff_ids"] == [layer.digest]
    assert layout["blobs"][layer.digest] == layer.size
    with tarfile.open(first.archive) as tar:
        assert json.load(tar.extractfile("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        for name in tar.getnames():
            if name.startswith("blobs/sha256/") and name.count("/") == 2:
                assert oci.sha256_digest(tar.extractfile(name).read()) == "sha256:" + name.rsplit("/", 1)[1]


def test_another_ref_changes_only_the_index(tmp_path):
    layer = oci.write_layer(_entries(tmp_path), tmp_path / "layer.tar")
    one = oci.write_oci_archive(REF, [layer], ImageConfig(), tmp_path / "one.oci.tar")
    two = oci.write_oci_archive(REF.replace("1.0", "2.0"), [layer], ImageConfig(), tmp_path / "two.oci.tar")
    assert one.manifest_digest == two.manifest_digest


# --- keys, refs, sources ----------------------------------------------------------------------


def test_keys_are_stable_and_input_sensitive():
    assert binaries.key_of({"a": 1, "b": [1, 2]}) == binaries.key_of({"b": [1, 2], "a": 1})
    assert binaries.key_of({"a": 1}) != binaries.key_of({"a": 2})
    spec = rootfs.RootfsSpec(include=("curl", "ca-certificates"), mirror="http://deb.example/debian")
    same = rootfs.RootfsSpec(include=("ca-certificates", "curl", "curl"), mirror="http://deb.example/debian")
    other = rootfs.RootfsSpec(include=("curl",), mirror="http://deb.example/debian")
    assert spec.key() == same.key() != other.key()


def test_istio_refs_are_what_istioctl_renders_from_hub_and_tag():
    tag = recipes.istio_tag()
    assert "+" not in tag and tag.endswith(recipes.toolchain_module.PINS.istio_revision)
    refs = recipes.image_refs(curl_version="7.88.1-10+deb12u15")
    assert refs["pilot"] == f"{recipes.ISTIO_HUB}/pilot:{tag}"
    assert refs["proxyv2"] == f"{recipes.ISTIO_HUB}/proxyv2:{tag}"
    assert refs["curl"] == f"{recipes.HUB}/curl:7.88.1-10-deb12u15-bookworm"
    assert set(refs) == set(recipes.ROLES)
    for ref in refs.values():
        oci.parse_reference(ref)  # full, versioned, never latest


def test_installed_packages_parses_dpkg_status():
    status = ("Package: curl\nStatus: install ok installed\nVersion: 7.88.1-10+deb12u15\n\n"
              "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
              "Package: iptables\nStatus: install ok installed\nVersion: 1.8.9-2\n")
    assert rootfs.installed_packages(status) == {"curl": "7.88.1-10+deb12u15", "iptables": "1.8.9-2"}


def test_mirror_is_read_from_one_line_and_deb822_sources():
    one_line = "# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n"
    assert rootfs.mirror_in(one_line, "bookworm", deb822=False) == "http://mirror.example/debian"
    deb822 = ("Types: deb\n# http://snapshot\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\n"
              "Components: main\n\nTypes: deb\nURIs: http://deb.example/debian-security\n"
              "Suites: bookworm-security\n")
    assert rootfs.mirror_in(deb822, "bookworm", deb822=True) == "http://deb.example/debian"
    assert rootfs.mirror_in(deb822, "trixie", deb822=True) == ""


def test_parse_images_ls():
    output = ("REF TYPE DIGEST SIZE PLATFORMS LABELS\n"
              f"{REF} application/vnd.oci.image.manifest.v1+json sha256:{'a' * 64} 1.4 MiB linux/amd64 -\n")
    assert containerd.parse_images_ls(output) == {REF: "sha256:" + "a" * 64}


# --- a real containerd ---------------------------------------------------------------------------


@pytest.fixture
def throwaway_containerd():
    """A containerd of our own (root/state/socket under tmp, CRI off), stopped and unmounted after."""
    if os.geteuid() != 0 or not shutil.which("containerd") or not shutil.which("ctr"):
        pytest.skip("needs root and the Debian package `containerd` (containerd + ctr)")
    # Short, not under tmp_path: containerd refuses a socket path over 104 bytes, which pytest's
    # base temp reaches under xdist once its run counter has three digits.
    base = Path(tempfile.mkdtemp(prefix="ccc-containerd-"))
    socket = base / "containerd.sock"
    config = base / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{base / "root"}"\nstate = "{base / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n[ttrpc]\n  address = "{socket}.ttrpc"\n'
        '[debug]\n  address = ""\n[metrics]\n  address = ""\n')
    log = (base / "containerd.log").open("wb")
    process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        answers = Retrying(stop=stop_after_delay(20), wait=wait_fixed(0.1), retry=retry_if_result(lambda ok: not ok),
                           retry_error_callback=lambda state: False)(
            lambda: socket.exists() and subprocess.run(
                ["ctr", "--address", str(socket), "version"], capture_output=True, check=False).returncode == 0)
        if not answers:
            seen = subprocess.run(["ctr", "--address", str(socket), "version"], capture_output=True, text=True,
                                  check=False)
            pytest.fail(f"containerd at {socket} did not answer `ctr version` within 20 s: {seen.stderr.strip()}; "
                        f"its log ends: {(base / 'containerd.log').read_text()[-1500:]}", pytrace=False)
        yield socket
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith(str(base)):
                subprocess.run(["umount", "-l", target], check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_archive_imports_into_containerd_under_its_full_reference(tmp_path, throwaway_containerd):
    script = tmp_path / "hello"
    script.write_bytes(b"#!/bin/sh\necho hello\n")
    layer = oci.write_layer([FileEntry("hello", mode=0o755, source=script), DirEntry("tmp", mode=0o1777)],
                            tmp_path / "layer.tar")
    image = oci.write_oci_archive(REF, [layer], ImageConfig(entrypoint=("/hello",)), tmp_path / "image.oci.tar")

    imported = containerd.import_image("ctr", throwaway_containerd, image.archive)

    assert imported == containerd.ImportedImage(REF, image.manifest_digest)
    assert containerd.list_images("ctr", throwaway_containerd)[REF] == image.manifest_digest
    snapshots = subprocess.run(containerd.ctr_argv("ctr", throwaway_containerd, "snapshots", "ls"),
                               capture_output=True, text=True, check=True).stdout
    assert layer.digest in snapshots  # unpacked into overlayfs, where the CRI looks (chain ID = diff ID)


def test_import_of_a_broken_archive_names_ctr_failure(tmp_path, throwaway_containerd):
    layer = oci.write_layer([FileEntry("x", data=b"x")], tmp_path / "layer.tar")
    image = oci.write_oci_archive(REF, [layer], ImageConfig(), tmp_path / "image.oci.tar")
    # Same index, a layer blob that does not match its digest.
    broken = tmp_path / "broken.oci.tar"
    with tarfile.open(image.archive) as source, tarfile.open(broken, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if member.name == "blobs/sha256/" + layer.digest.split(":")[1]:
                data = data[:-1] + b"!"
            target.addfile(member, None if data is None else __import__("io").BytesIO(data))
    with pytest.raises(containerd.ImageImportError):
        containerd.import_image("ctr", throwaway_containerd, broken)


def test_the_suites_pause_image_imports_under_its_ref(throwaway_containerd):
    if shutil.which("go") is None:
        pytest.skip("Go is needed to build the pause binary")
    [image] = recipes.build_images(["pause"], progress=lambda line: None).values()
    assert image.ref == recipes.image_refs(curl_version="")["pause"]
    assert recipes.build_images(["pause"], progress=lambda line: None)["pause"].cached

    imported = containerd.import_image("ctr", throwaway_containerd, image.archive)

    assert imported.digest == image.manifest_digest
