#!/usr/bin/env python3
"""make_app_image.py ARCHIVE NAME ARCH=BUSYBOX...: a multi-arch OCI archive of a tiny app image
(busybox httpd serving /www on :8080) for the demo, built from Debian's busybox-static. Layers
are gzip with fixed mtimes, so the same inputs always give the same digests."""
import gzip, hashlib, io, json, os, sys, tarfile, tempfile

def blob(dirpath, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(dirpath, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)

def layer(busybox, arch):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ("bin", "www"):
            info = tarfile.TarInfo(d); info.type = tarfile.DIRTYPE; info.mode = 0o755; info.mtime = 0
            t.addfile(info)
        data = open(busybox, "rb").read()
        info = tarfile.TarInfo("bin/busybox"); info.size = len(data); info.mode = 0o755; info.mtime = 0
        t.addfile(info, io.BytesIO(data))
        page = f"hello from kiln's demo app ({arch})\n".encode()
        info = tarfile.TarInfo("www/index.html"); info.size = len(page); info.mode = 0o644; info.mtime = 0
        t.addfile(info, io.BytesIO(page))
    uncompressed = raw.getvalue()
    return uncompressed, gzip.compress(uncompressed, mtime=0)

def main():
    archive, name, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "blobs", "sha256"))
        manifests = []
        for pair in pairs:
            arch, busybox = pair.split("=", 1)
            uncompressed, compressed = layer(busybox, arch)
            ldigest, lsize = blob(d, compressed)
            config = {"architecture": arch, "os": "linux",
                      "config": {"Entrypoint": ["/bin/busybox"], "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/www"]},
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(uncompressed).hexdigest()]}}
            cdigest, csize = blob(d, json.dumps(config, sort_keys=True).encode())
            manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ldigest, "size": lsize}]}
            mdigest, msize = blob(d, json.dumps(manifest, sort_keys=True).encode())
            manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": msize,
                              "platform": {"architecture": arch, "os": "linux"}})
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
        idigest, isize = blob(d, json.dumps(index, sort_keys=True).encode())
        top = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": idigest,
               "size": isize, "annotations": {"org.opencontainers.image.ref.name": name}}]}
        with open(os.path.join(d, "index.json"), "w") as f:
            json.dump(top, f)
        with open(os.path.join(d, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        tmp = archive + ".tmp"
        with tarfile.open(tmp, "w") as t:
            for entry in ("oci-layout", "index.json", "blobs"):
                t.add(os.path.join(d, entry), arcname=entry)
        os.replace(tmp, archive)

if __name__ == "__main__":
    main()
