#!/usr/bin/python3
"""Stand-ins for kubeadm, kubelet, kubectl and ipvsadm, for kiln's e2e tests only.

Real Kubernetes binaries cannot be downloaded where kiln's tests run. These keep the real
command-line contract for the commands kiln uses, validate what they receive as the real ones
would (kubeadm config kinds and fields, token format, CA hash, certificate key, certificates
against the CA, certSANs), write the files the real ones write, and keep cluster state in a tiny
HTTPS API that the kubelet stand-in serves on every control-plane node from kube-apiserver's
static pod manifest (joined masters forward to the first one, which holds the state, as etcd
would). ipvsadm's stand-in exists because the test machine's kernel has no IP_VS: it keeps the
virtual servers in a file, and the stand-ins' client resolves a virtual address through it
exactly as the kernel would route it, so wrong rules break joins here as they would for real.

Every call is appended to /var/log/fake-kube/calls.log (time, host, arch, argv) so a test can
check the order of calls across hosts (test hosts share one clock).

It is dispatched by the name it is called as; it is never part of a real base image.
"""

import base64
import hashlib
import hmac
import http.server
import ipaddress
import json
import os
import platform
import re
import secrets
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import yaml

VERSION = "v1.30.6"
STATE = "/var/lib/fake-kube"
LOG = "/var/log/fake-kube/calls.log"
K8S = "/etc/kubernetes"
PKI = K8S + "/pki"
MANIFESTS = K8S + "/manifests"
KUBELET_DIR = "/var/lib/kubelet"
FAIL_JOIN = "/etc/kiln-fake-kube/fail-join"
# Seconds a join takes at least (a test shows joins overlap with it).
JOIN_DELAY = "/etc/kiln-fake-kube/join-delay"
TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
KUBEADM_APIS = {"kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta4"}
OTHER_KINDS = {
    "KubeletConfiguration": "kubelet.config.k8s.io/v1beta1",
    "KubeProxyConfiguration": "kubeproxy.config.k8s.io/v1alpha1",
}


class Fail(Exception):
    pass


def die(message, code=1):
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.exit(code)


def record(tool, argv, event="call"):
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    line = json.dumps({"t": time.time(), "host": socket.gethostname(), "arch": platform.machine(),
                       "tool": tool, "event": event, "argv": argv})
    with open(LOG, "a") as f:
        f.write(line + "\n")


def write_file(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def openssl(*args, input=None):
    r = subprocess.run(["openssl", *args], input=input, capture_output=True)
    if r.returncode != 0:
        raise Fail("openssl %s: %s" % (" ".join(args), r.stderr.decode(errors="replace").strip()))
    return r.stdout


def ca_cert_hash(ca_pem_path):
    """kubeadm's discovery hash: sha256 of the CA's SubjectPublicKeyInfo (DER)."""
    pub = openssl("x509", "-in", ca_pem_path, "-pubkey", "-noout")
    der = openssl("pkey", "-pubin", "-outform", "der", input=pub)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def verify_cert(ca, cert):
    try:
        openssl("verify", "-CAfile", ca, cert)
    except Fail as e:
        raise Fail("[certs] %s does not verify against %s: %s" % (cert, ca, e))


def cert_sans(cert):
    text = openssl("x509", "-in", cert, "-noout", "-ext", "subjectAltName").decode()
    return {s.strip().split(":", 1)[1] for s in text.split("\n", 1)[-1].split(",") if ":" in s}


# --- flags ----------------------------------------------------------------------------------

def parse_flags(args, known, bool_flags=()):
    """`--name value`, `--name=value`, `-x value`; unknown flags fail as cobra's do."""
    flags, positional, i = {}, [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("-") and a != "-":
            name, eq, value = a.lstrip("-").partition("=")
            if name not in known and name not in bool_flags:
                raise Fail("unknown flag: %s" % a.split("=")[0])
            if name in bool_flags:
                flags[name] = value if eq else "true"
            elif eq:
                flags[name] = value
            else:
                i += 1
                if i >= len(args):
                    raise Fail("flag needs an argument: %s" % a)
                flags[name] = args[i]
        else:
            positional.append(a)
        i += 1
    return flags, positional


# --- kubeadm configuration --------------------------------------------------------------------

def minor_of(version):
    m = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", str(version))
    if not m:
        raise Fail("couldn't parse kubernetesVersion %r" % version)
    return int(m.group(2))


def load_config(path, allowed):
    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        raise Fail("unable to read config from %r: %s" % (path, e))
    by_kind = {}
    for d in docs:
        kind, api = d.get("kind"), d.get("apiVersion")
        if not kind or not api:
            raise Fail("%s: a document lacks apiVersion or kind" % path)
        if kind in OTHER_KINDS:
            if api != OTHER_KINDS[kind]:
                raise Fail("%s: %s has apiVersion %s, want %s" % (path, kind, api, OTHER_KINDS[kind]))
        elif api not in KUBEADM_APIS:
            raise Fail("%s: unsupported apiVersion %r for %s" % (path, api, kind))
        if kind not in allowed:
            sys.stderr.write("W: [config] WARNING: Ignored YAML document with GroupVersionKind %s, Kind=%s\n" % (api, kind))
            continue
        if kind in by_kind:
            raise Fail("%s: more than one %s" % (path, kind))
        by_kind[kind] = d
    return by_kind


def check_api_version(docs, version):
    want = "kubeadm.k8s.io/v1beta4" if minor_of(version) >= 31 else "kubeadm.k8s.io/v1beta3"
    for kind, d in docs.items():
        if kind in OTHER_KINDS:
            continue
        if minor_of(version) >= 31 and d["apiVersion"] != want:
            pass  # v1beta3 is still read (deprecated) from 1.31
        if minor_of(version) < 31 and d["apiVersion"] == "kubeadm.k8s.io/v1beta4":
            raise Fail("%s: kubeadm.k8s.io/v1beta4 needs Kubernetes 1.31 or newer (have %s)" % (kind, version))
        if d["apiVersion"] == "kubeadm.k8s.io/v1beta4":
            for path in (("apiServer",), ("controllerManager",), ("scheduler",), ("nodeRegistration",)):
                args = (d.get(path[0]) or {}).get("extraArgs" if path[0] != "nodeRegistration" else "kubeletExtraArgs")
                if args is not None and not isinstance(args, list):
                    raise Fail("%s.%s: v1beta4 wants a list of {name, value}" % (kind, path[0]))


def check_cidr(value, what):
    for part in str(value).split(","):
        try:
            ipaddress.ip_network(part.strip(), strict=False)
        except ValueError:
            raise Fail("%s %r is not a valid CIDR" % (what, value))


def local_ips():
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    return {m.group(1) for m in re.finditer(r"inet6? ([0-9a-f.:]+)/", out)}


def preflight(ignored, ports, control_plane, joining):
    errors = []
    if os.geteuid() != 0:
        errors.append("[ERROR IsPrivilegedUser]: user is not running as root")
    with open("/proc/swaps") as f:
        if len(f.read().strip().splitlines()) > 1:
            errors.append("[ERROR Swap]: running with swap on is not supported. Please disable swap")
    sock = "/run/containerd/containerd.sock"
    if not os.path.exists(sock):
        errors.append("[ERROR CRI]: container runtime is not running: %s does not exist" % sock)
    for port in ports:
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
        except OSError:
            errors.append("[ERROR Port-%d]: Port %d is in use" % (port, port))
        finally:
            s.close()
    if joining and os.path.exists(K8S + "/kubelet.conf"):
        errors.append("[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: /etc/kubernetes/kubelet.conf already exists")
    if control_plane and os.path.isdir(MANIFESTS) and os.listdir(MANIFESTS):
        errors.append("[ERROR DirAvailable--etc-kubernetes-manifests]: /etc/kubernetes/manifests is not empty")
    errors = [e for e in errors if e.split("]")[0].split()[-1] not in ignored and "all" not in ignored]
    if errors:
        raise Fail("error execution phase preflight: [preflight] Some fatal errors occurred:\n\t"
                   + "\n\t".join(errors)
                   + "\n[preflight] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`")


# --- certificates written by kiln -------------------------------------------------------------

SHARED_CERTS = ["ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key",
                "etcd/ca.crt", "etcd/ca.key"]
LEAVES = [("ca.crt", "apiserver.crt"), ("ca.crt", "apiserver-kubelet-client.crt"),
          ("front-proxy-ca.crt", "front-proxy-client.crt"), ("etcd/ca.crt", "etcd/server.crt"),
          ("etcd/ca.crt", "etcd/peer.crt"), ("etcd/ca.crt", "etcd/healthcheck-client.crt"),
          ("etcd/ca.crt", "apiserver-etcd-client.crt")]


def check_control_plane_pki(node_name, advertise, cluster_cfg):
    """The real kubeadm uses valid certificates it finds; the stand-in cannot create any, so
    every one must be there, verify against its CA and carry the names kubeadm would put in."""
    for f in SHARED_CERTS:
        if not os.path.exists(os.path.join(PKI, f)):
            raise Fail("[certs] %s/%s is missing (the stand-in does not generate certificates)" % (PKI, f))
    for ca, leaf in LEAVES:
        path = os.path.join(PKI, leaf)
        if not os.path.exists(path):
            raise Fail("[certs] %s is missing" % path)
        verify_cert(os.path.join(PKI, ca), path)
    sans = cert_sans(os.path.join(PKI, "apiserver.crt"))
    domain = ((cluster_cfg.get("networking") or {}).get("dnsDomain")) or "cluster.local"
    service = str(((cluster_cfg.get("networking") or {}).get("serviceSubnet")) or "10.96.0.0/12").split(",")[0]
    first_ip = str(next(ipaddress.ip_network(service.strip(), strict=False).hosts()))
    endpoint_host = str(cluster_cfg.get("controlPlaneEndpoint", "")).rsplit(":", 1)[0]
    want = {"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + domain,
            node_name, advertise, first_ip}
    want |= {str(s) for s in ((cluster_cfg.get("apiServer") or {}).get("certSANs") or [])}
    if endpoint_host:
        want.add(endpoint_host)
    missing = sorted(w for w in want if w not in sans)
    if missing:
        raise Fail("[certs] apiserver.crt lacks the subject alternative names %s (has %s)" % (missing, sorted(sans)))
    for conf in ["admin.conf", "controller-manager.conf", "scheduler.conf"]:
        check_kubeconfig(os.path.join(K8S, conf))


def check_kubeconfig(path):
    if not os.path.exists(path):
        raise Fail("[kubeconfig] %s is missing" % path)
    cfg = yaml.safe_load(open(path))
    ca = base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"])
    if ca.strip() != open(PKI + "/ca.crt", "rb").read().strip():
        raise Fail("[kubeconfig] %s: a kubeconfig file %r exists already but has got the wrong CA cert" % (path, path))
    user = cfg["users"][0]["user"]
    if "client-certificate-data" in user:
        with tempfile.NamedTemporaryFile("wb", suffix=".crt") as t:
            t.write(base64.b64decode(user["client-certificate-data"]))
            t.flush()
            verify_cert(PKI + "/ca.crt", t.name)


# --- client: /etc/hosts, IPVS, TLS ------------------------------------------------------------

def resolve(name):
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    with open("/etc/hosts") as f:
        for line in f:
            fields = line.split("#")[0].split()
            if len(fields) > 1 and name in fields[1:]:
                return fields[0]
    raise Fail("dial tcp: lookup %s: no such host" % name)


def ipvs_backends(ip, port):
    """What the kernel's IPVS would send a connection to ip:port to, or None if no service."""
    for svc in read_json(STATE + "/ipvs.json", {"services": []})["services"]:
        if svc["addr"] == "%s:%d" % (ip, port):
            return [r["addr"] for r in svc["reals"]]
    return None


def connect(endpoint):
    host, port = endpoint.rsplit(":", 1)
    port = int(port)
    ip = resolve(host)
    backends = ipvs_backends(ip, port)
    candidates = [(b.rsplit(":", 1)[0], int(b.rsplit(":", 1)[1])) for b in backends] if backends is not None else [(ip, port)]
    if backends == []:
        raise Fail("dial tcp %s:%d: IPVS service has no real servers" % (ip, port))
    last = None
    for addr in candidates:
        try:
            return host, socket.create_connection(addr, timeout=10)
        except OSError as e:
            last = e
    raise Fail("dial tcp %s:%d: %s" % (ip, port, last))


class Client:
    def __init__(self, server, ca_pem=None, cert=None, key=None, token=None, insecure=False):
        self.endpoint = server.replace("https://", "").rstrip("/")
        self.ctx = ssl.create_default_context()
        if insecure:
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        else:
            self.ctx.load_verify_locations(cadata=ca_pem.decode() if isinstance(ca_pem, bytes) else ca_pem)
        self.token = token
        if cert:
            self.ctx.load_cert_chain(cert, key)

    @classmethod
    def from_kubeconfig(cls, path):
        try:
            cfg = yaml.safe_load(open(path))
        except OSError:
            raise Fail("error: stat %s: no such file or directory" % path)
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        ca = base64.b64decode(cluster["certificate-authority-data"])
        cert = key = None
        if "client-certificate-data" in user:
            d = tempfile.mkdtemp(prefix="fake-kube-")
            cert, key = d + "/c.crt", d + "/c.key"
            write_file(cert, base64.b64decode(user["client-certificate-data"]), 0o600)
            write_file(key, base64.b64decode(user["client-key-data"]), 0o600)
        return cls(cluster["server"], ca, cert, key, user.get("token"))

    def request(self, method, path, body=None, extra_headers=None):
        name, sock = connect(self.endpoint)
        with self.ctx.wrap_socket(sock, server_hostname=name) as s:
            data = json.dumps(body).encode() if body is not None else b""
            headers = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % self.endpoint, "Connection: close",
                       "Content-Type: application/json", "Content-Length: %d" % len(data)]
            if self.token:
                headers.append("Authorization: Bearer %s" % self.token)
            for k, v in (extra_headers or {}).items():
                headers.append("%s: %s" % (k, v))
            s.sendall(("\r\n".join(headers) + "\r\n\r\n").encode() + data)
            raw = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                raw += chunk
        head, _, payload = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        result = json.loads(payload) if payload else None
        if status >= 300:
            raise Fail("the server responded %d: %s" % (status, (result or {}).get("message", payload.decode(errors="replace"))))
        return result


# --- the API stand-in (served by the kubelet stand-in from the apiserver manifest) --------------

class ApiState:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.data = read_json(path, {"nodes": {}, "objects": {}, "tokens": {}, "certs": None, "configmaps": {}})

    def save(self):
        write_file(self.path, json.dumps(self.data, indent=1), 0o600)


def flag_map(manifest_path):
    m = yaml.safe_load(open(manifest_path))
    c = m["spec"]["containers"][0]
    flags = {}
    for a in c.get("command", [])[1:]:
        k, _, v = a.lstrip("-").partition("=")
        flags[k] = v
    return m, flags


def serve_api(manifest_path, stop):
    manifest, flags = flag_map(manifest_path)
    addr, port = flags["advertise-address"], int(flags.get("secure-port", "6443"))
    forward_to = (manifest["metadata"].get("annotations") or {}).get("fake-kube/state-from")
    state = None if forward_to else ApiState(STATE + "/apiserver.json")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(flags["tls-cert-file"], flags["tls-private-key-file"])
    ctx.load_verify_locations(flags["client-ca-file"])
    ctx.verify_mode = ssl.CERT_OPTIONAL
    upstream = None
    if forward_to:
        upstream = Client(forward_to, open(flags["client-ca-file"]).read(),
                          flags["kubelet-client-certificate"], flags["kubelet-client-key"])

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def user(self):
            cert = self.connection.getpeercert()
            if cert:
                cn = dict(x[0] for x in cert["subject"]).get("commonName")
                if cn == "kube-apiserver-kubelet-client" and self.headers.get("X-Remote-User"):
                    return self.headers["X-Remote-User"]
                return cn
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                token = auth[7:]
                if forward_to:
                    return "token:" + token  # the holder checks it
                if state.data["tokens"].get(token.split(".")[0]) == token:
                    return "system:bootstrap:" + token.split(".")[0]
            return None

        def handle_any(self, method):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            user = self.user()
            if upstream:
                headers = {}
                if user and not user.startswith("token:"):
                    headers["X-Remote-User"] = user
                try:
                    if user and user.startswith("token:"):
                        c = Client(forward_to, open(flags["client-ca-file"]).read(), token=user[6:])
                        return self.reply(200, c.request(method, self.path, body))
                    return self.reply(200, upstream.request(method, self.path, body, headers))
                except Fail as e:
                    return self.reply(502, {"message": str(e)})
            try:
                status, result = route(state, method, self.path, body, user)
            except Fail as e:
                status, result = 400, {"message": str(e)}
            self.reply(status, result)

        def do_GET(self):
            self.handle_any("GET")

        def do_PUT(self):
            self.handle_any("PUT")

        def do_POST(self):
            self.handle_any("POST")

        def do_DELETE(self):
            self.handle_any("DELETE")

    class Server(http.server.ThreadingHTTPServer):
        allow_reuse_address = True
        daemon_threads = True

        def get_request(self):
            sock, peer = self.socket.accept()
            return ctx.wrap_socket(sock, server_side=True), peer

    # A restarted apiserver may find the old one's socket still closing, as a real one can.
    for attempt in range(60):
        try:
            server = Server((addr, port), Handler)
            break
        except OSError:
            if attempt == 59 or stop.wait(0.5):
                return
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()
    server.shutdown()
    server.server_close()


def route(state, method, path, body, user):
    path = path.split("?")[0]
    anonymous_ok = {("GET", "/healthz"), ("GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")}
    if user is None and (method, path) not in anonymous_ok:
        return 401, {"message": "Unauthorized"}
    bootstrap = user is not None and user.startswith("system:bootstrap:")
    with state.lock:
        d = state.data
        if path == "/healthz":
            return 200, {"status": "ok"}
        if method == "GET" and path == "/api/v1/namespaces/kube-public/configmaps/cluster-info" and user is None:
            info = d["configmaps"].get("kube-public/cluster-info")
            return (200, info) if info else (404, {"message": "configmaps \"cluster-info\" not found"})
        m = re.match(r"^/api/v1/namespaces/([^/]+)/configmaps/([^/]+)$", path)
        if m:
            key = m.group(1) + "/" + m.group(2)
            if method == "PUT" and not bootstrap:
                d["configmaps"][key] = body
                if key == "kube-public/cluster-info":
                    refresh_cluster_info(d)
                state.save()
            if key not in d["configmaps"]:
                return 404, {"message": "configmaps %r not found" % m.group(2)}
            return 200, d["configmaps"][key]
        if path == "/apis/fake-kube/bootstraptokens" and method == "POST" and not bootstrap:
            if not TOKEN_RE.match(body["token"]):
                return 400, {"message": "invalid token %r" % body["token"]}
            d["tokens"][body["token"].split(".")[0]] = body["token"]
            refresh_cluster_info(d)
            state.save()
            return 200, {}
        if path == "/apis/fake-kube/kubeadm-certs":
            if method == "PUT" and not bootstrap:
                d["certs"] = body
                state.save()
                return 200, {}
            if d["certs"] is None:
                return 404, {"message": "secrets \"kubeadm-certs\" not found"}
            return 200, d["certs"]
        if path == "/api/v1/nodes" and method == "GET":
            return 200, {"kind": "NodeList", "apiVersion": "v1", "items": [d["nodes"][n] for n in sorted(d["nodes"])]}
        m = re.match(r"^/api/v1/nodes/([^/]+)(/status)?$", path)
        if m:
            name, status = m.group(1), m.group(2)
            node = d["nodes"].get(name)
            if method == "GET":
                return (200, node) if node else (404, {"message": "nodes %r not found" % name})
            if method == "DELETE":
                d["nodes"].pop(name, None)
                state.save()
                return 200, {}
            if status:  # the kubelet: registers the node, owns status and its own labels
                if node is None:
                    node = body
                else:
                    node["status"] = body["status"]
                    node["metadata"]["labels"].update(body["metadata"].get("labels", {}))
            else:  # kubectl label / taint
                if node is None:
                    return 404, {"message": "nodes %r not found" % name}
                node["metadata"]["labels"] = body["metadata"]["labels"]
                node["spec"]["taints"] = body["spec"].get("taints", [])
                node["spec"]["unschedulable"] = body["spec"].get("unschedulable", False)
            d["nodes"][name] = node
            state.save()
            return 200, node
        if path == "/apis/fake-kube/objects":
            if method == "GET":
                return 200, {"items": list(d["objects"].values())}
            if bootstrap:
                return 403, {"message": "forbidden"}
            key = "%s/%s/%s" % (body["kind"], body["metadata"].get("namespace", "default"), body["metadata"]["name"])
            existed = key in d["objects"]
            d["objects"][key] = body
            state.save()
            return 200, {"result": "configured" if existed else "created"}
    return 404, {"message": "the server could not find the requested resource (%s %s)" % (method, path)}


def refresh_cluster_info(d):
    """kube-public/cluster-info with one JWS-like signature per bootstrap token, as the real
    bootstrap signer keeps it: a joining node proves the CA it is given through its token."""
    ci = d["configmaps"].get("kube-public/cluster-info")
    if not ci:
        return
    kubeconfig = ci["data"]["kubeconfig"]
    ci["data"] = {"kubeconfig": kubeconfig}
    for token_id, token in d["tokens"].items():
        ci["data"]["jws-kubeconfig-" + token_id] = hmac.new(token.encode(), kubeconfig.encode(), "sha256").hexdigest()


# --- kubelet ----------------------------------------------------------------------------------

def kubelet(args):
    flags, _ = parse_flags(args, {"kubeconfig", "bootstrap-kubeconfig", "config", "container-runtime-endpoint",
                                  "node-ip", "hostname-override", "node-labels", "pod-infra-container-image",
                                  "cgroup-driver", "v"})
    for line in open(KUBELET_DIR + "/kubeadm-flags.env") if os.path.exists(KUBELET_DIR + "/kubeadm-flags.env") else []:
        if line.startswith("KUBELET_KUBEADM_ARGS="):
            more, _ = parse_flags(line.split("=", 1)[1].strip().strip('"').split(), set(flags) | {
                "container-runtime-endpoint", "node-ip", "hostname-override", "node-labels",
                "pod-infra-container-image"})
            flags.update(more)
    config = flags.get("config", KUBELET_DIR + "/config.yaml")
    if not os.path.exists(config):
        die("E: failed to load kubelet config file, path: %s, error: open %s: no such file or directory" % (config, config))
    kc = yaml.safe_load(open(config))
    if kc.get("kind") != "KubeletConfiguration":
        die("E: %s is not a KubeletConfiguration" % config)
    kubeconfig = flags.get("kubeconfig", K8S + "/kubelet.conf")
    if not os.path.exists(kubeconfig):
        die("E: unable to load kubeconfig %s" % kubeconfig)
    record("kubelet", args, "start")
    name = flags.get("hostname-override") or socket.gethostname()
    api_stop, api_thread, api_manifest = None, None, None
    static_pods_seen = {}
    while True:
        # Like the real kubelet: a static pod whose manifest changed is a new pod, started with
        # the files as they are now (how certificate renewals take effect).
        manifests = {}
        if os.path.isdir(MANIFESTS):
            for f in sorted(os.listdir(MANIFESTS)):
                if f.endswith(".yaml"):
                    manifests[f[:-5]] = open(os.path.join(MANIFESTS, f), "rb").read()
        for pod, content in manifests.items():
            if pod in static_pods_seen and static_pods_seen[pod] != content:
                record("kubelet", [pod], "restart")
        static_pods_seen = manifests
        manifest = MANIFESTS + "/kube-apiserver.yaml"
        current = manifests.get("kube-apiserver")
        if api_thread is not None and current != api_manifest:
            api_stop.set()
            api_thread.join(10)
            api_thread = None
        if current is not None and api_thread is None:
            api_stop = threading.Event()
            api_thread = threading.Thread(target=serve_api, args=(manifest, api_stop), daemon=True)
            api_thread.start()
            api_manifest = current
        try:
            heartbeat(kubeconfig, name, flags)
        except (Fail, OSError, ssl.SSLError, KeyError, ValueError) as e:
            sys.stderr.write("E: node %s: %s\n" % (name, e))
        time.sleep(2)


def heartbeat(kubeconfig, name, flags):
    client = Client.from_kubeconfig(kubeconfig)
    # The CNI stand-in: a CNI's DaemonSet writes its config from a ConfigMap key
    # `cni-conf.json` (flannel's convention); the node is Ready once a config is there.
    objects = client.request("GET", "/apis/fake-kube/objects")["items"]
    daemonset_namespaces = {o["metadata"].get("namespace", "default") for o in objects if o["kind"] == "DaemonSet"}
    for o in objects:
        conf = (o.get("data") or {}).get("cni-conf.json")
        if o["kind"] == "ConfigMap" and conf and o["metadata"].get("namespace", "default") in daemonset_namespaces:
            target = "/etc/cni/net.d/10-%s.conflist" % o["metadata"]["name"]
            if not os.path.exists(target):
                write_file(target, conf)
    cni = os.path.isdir("/etc/cni/net.d") and any(f.endswith((".conf", ".conflist")) for f in os.listdir("/etc/cni/net.d"))
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    labels = {"kubernetes.io/arch": arch, "kubernetes.io/os": "linux", "kubernetes.io/hostname": name}
    for pair in filter(None, flags.get("node-labels", "").split(",")):
        k, _, v = pair.partition("=")
        labels[k] = v
    ready = {"type": "Ready", "status": "True" if cni else "False",
             "reason": "KubeletReady" if cni else "KubeletNotReady",
             "message": "kubelet is posting ready status" if cni else "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"}
    node = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "labels": labels},
            "spec": {"taints": []},
            "status": {"conditions": [ready], "nodeInfo": {"architecture": arch, "kubeletVersion": VERSION},
                       "addresses": [{"type": "InternalIP", "address": flags.get("node-ip") or resolve_self()}]}}
    client.request("PUT", "/api/v1/nodes/%s/status" % name, node)


def resolve_self():
    return sorted(ip for ip in local_ips() if not ip.startswith("127.") and ":" not in ip)[0]


# --- kubeadm ----------------------------------------------------------------------------------

def kubeadm(args):
    record("kubeadm", args)
    if not args:
        die("kubeadm: missing command")
    cmd, rest = args[0], args[1:]
    if cmd == "version":
        flags, _ = parse_flags(rest, {"output", "o"})
        print(VERSION if (flags.get("output") or flags.get("o")) == "short" else 'kubeadm version: &version.Info{GitVersion:"%s"}' % VERSION)
    elif cmd == "init" and rest[:1] == ["phase"]:
        if rest[1:2] != ["upload-certs"]:
            raise Fail("the stand-in has no init phase %r" % rest[1:2])
        upload_certs(rest[2:])
    elif cmd == "init":
        init(rest)
    elif cmd == "join":
        join(rest)
    elif cmd == "token" and rest[:1] == ["create"]:
        token_create(rest[1:])
    elif cmd == "reset":
        reset(rest)
    else:
        raise Fail("unknown command %r for \"kubeadm\"" % " ".join(args))


def admin_client():
    return Client.from_kubeconfig(K8S + "/admin.conf")


def kubelet_start(kubelet_cfg, extra_args):
    write_file(KUBELET_DIR + "/config.yaml", yaml.safe_dump(kubelet_cfg))
    write_file(KUBELET_DIR + "/kubeadm-flags.env", 'KUBELET_KUBEADM_ARGS="%s"\n' % " ".join(extra_args))
    print("[kubelet-start] Starting the kubelet")
    subprocess.run(["systemctl", "restart", "kubelet"], check=True)


def wait_for(what, check, seconds=90):
    deadline = time.time() + seconds
    last = None
    while time.time() < deadline:
        try:
            if check():
                return
        except (Fail, OSError, ssl.SSLError) as e:
            last = e
        time.sleep(1)
    raise Fail("timed out waiting for the condition: %s (%s)" % (what, last))


def static_pods(advertise, port, forward_to=None):
    annotations = {"fake-kube/state-from": forward_to} if forward_to else {}
    apiserver = {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "kube-apiserver", "namespace": "kube-system", "annotations": annotations},
                 "spec": {"containers": [{"name": "kube-apiserver", "command": [
                     "kube-apiserver", "--advertise-address=%s" % advertise, "--secure-port=%d" % port,
                     "--tls-cert-file=%s/apiserver.crt" % PKI, "--tls-private-key-file=%s/apiserver.key" % PKI,
                     "--client-ca-file=%s/ca.crt" % PKI,
                     "--kubelet-client-certificate=%s/apiserver-kubelet-client.crt" % PKI,
                     "--kubelet-client-key=%s/apiserver-kubelet-client.key" % PKI]}]}}
    write_file(MANIFESTS + "/kube-apiserver.yaml", yaml.safe_dump(apiserver), 0o600)
    for name in ["etcd", "kube-controller-manager", "kube-scheduler"]:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "kube-system"},
               "spec": {"containers": [{"name": name, "command": [name]}]}}
        write_file(MANIFESTS + "/%s.yaml" % name, yaml.safe_dump(pod), 0o600)


def kubelet_args(node_reg):
    args = ["--container-runtime-endpoint=%s" % node_reg.get("criSocket", "unix:///run/containerd/containerd.sock")]
    extra = node_reg.get("kubeletExtraArgs") or {}
    items = [(e["name"], e["value"]) for e in extra] if isinstance(extra, list) else extra.items()
    return args + ["--%s=%s" % (k, v) for k, v in items]


def node_registered(client, name):
    node = client.request("GET", "/api/v1/nodes/%s" % name)
    return node is not None


def init(args):
    flags, _ = parse_flags(args, {"config", "ignore-preflight-errors", "skip-phases", "v", "certificate-key"},
                           bool_flags={"upload-certs", "skip-token-print"})
    if "config" not in flags:
        raise Fail("the stand-in needs --config (kiln always passes one)")
    docs = load_config(flags["config"], {"InitConfiguration", "ClusterConfiguration", "KubeletConfiguration",
                                         "KubeProxyConfiguration"})
    for kind in ["InitConfiguration", "ClusterConfiguration"]:
        if kind not in docs:
            raise Fail("%s: no %s document" % (flags["config"], kind))
    init_cfg, cluster = docs["InitConfiguration"], docs["ClusterConfiguration"]
    version = cluster.get("kubernetesVersion")
    if not version:
        raise Fail("ClusterConfiguration.kubernetesVersion is required")
    if minor_of(version) != minor_of(VERSION):
        raise Fail("this version of kubeadm (%s) cannot deploy Kubernetes %s" % (VERSION, version))
    check_api_version(docs, version)
    endpoint = cluster.get("controlPlaneEndpoint", "")
    if not re.match(r"^[a-z0-9.-]+:\d+$", endpoint):
        raise Fail("ClusterConfiguration.controlPlaneEndpoint %r is not host:port" % endpoint)
    net = cluster.get("networking") or {}
    check_cidr(net.get("podSubnet", "10.244.0.0/16"), "networking.podSubnet")
    check_cidr(net.get("serviceSubnet", "10.96.0.0/12"), "networking.serviceSubnet")
    api = init_cfg.get("localAPIEndpoint") or {}
    advertise = api.get("advertiseAddress")
    if advertise not in local_ips():
        raise Fail("InitConfiguration.localAPIEndpoint.advertiseAddress %r is not an address of this host" % advertise)
    port = int(api.get("bindPort", 6443))
    node_reg = init_cfg.get("nodeRegistration") or {}
    name = node_reg.get("name") or socket.gethostname()
    ignored = set(flags.get("ignore-preflight-errors", "").split(",")) - {""}
    print("[init] Using Kubernetes version: %s" % version)
    preflight(ignored, [port, 10250, 10257, 10259, 2379, 2380], control_plane=True, joining=False)
    check_control_plane_pki(name, advertise, cluster)
    print("[certs] Using existing certificates in %s" % PKI)
    static_pods(advertise, port)
    kubelet_cfg = docs.get("KubeletConfiguration") or {"apiVersion": OTHER_KINDS["KubeletConfiguration"],
                                                       "kind": "KubeletConfiguration"}
    if not os.path.exists(K8S + "/kubelet.conf"):
        raise Fail("[kubeconfig] %s/kubelet.conf is missing" % K8S)
    check_kubeconfig(K8S + "/kubelet.conf")
    kubelet_start(kubelet_cfg, kubelet_args(node_reg))
    client = admin_client()
    wait_for("the control plane", lambda: client.request("GET", "/healthz"))
    wait_for("node %s to register" % name, lambda: node_registered(client, name))
    client.request("PUT", "/api/v1/namespaces/kube-system/configmaps/kubeadm-config",
                   {"data": {"ClusterConfiguration": yaml.safe_dump(cluster)}})
    client.request("PUT", "/api/v1/namespaces/kube-system/configmaps/kubelet-config",
                   {"data": {"kubelet": yaml.safe_dump(kubelet_cfg)}})
    ca = open(PKI + "/ca.crt", "rb").read()
    info = {"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "", "cluster": {
        "certificate-authority-data": base64.b64encode(ca).decode(), "server": "https://%s" % endpoint}}]}
    client.request("PUT", "/api/v1/namespaces/kube-public/configmaps/cluster-info",
                   {"data": {"kubeconfig": yaml.safe_dump(info)}})
    mark_control_plane(client, name)
    tokens = [t["token"] for t in init_cfg.get("bootstrapTokens") or [] if "token" in t] or [new_token()]
    for t in tokens:
        client.request("POST", "/apis/fake-kube/bootstraptokens", {"token": t})
    print("[bootstrap-token] Configured bootstrap tokens")
    print("\nYour Kubernetes control-plane has initialized successfully!")
    record("kubeadm", ["init"] + args, "done")


def mark_control_plane(client, name):
    node = client.request("GET", "/api/v1/nodes/%s" % name)
    node["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = ""
    node["metadata"]["labels"]["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
    taint = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    if taint not in node["spec"]["taints"]:
        node["spec"]["taints"].append(taint)
    client.request("PUT", "/api/v1/nodes/%s" % name, node)
    print("[mark-control-plane] Marking the node %s as control-plane" % name)


def new_token():
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    pick = lambda n: "".join(secrets.choice(alphabet) for _ in range(n))
    return pick(6) + "." + pick(16)


def token_create(args):
    flags, positional = parse_flags(args, {"ttl", "config", "description", "groups", "usages", "kubeconfig", "v"},
                                    bool_flags={"print-join-command"})
    token = positional[0] if positional else new_token()
    if not TOKEN_RE.match(token):
        raise Fail("the bootstrap token %r was not of the form \"[a-z0-9]{6}.[a-z0-9]{16}\"" % token)
    client = admin_client()
    client.request("POST", "/apis/fake-kube/bootstraptokens", {"token": token})
    if flags.get("print-join-command") == "true":
        info = client.request("GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")
        server = yaml.safe_load(info["data"]["kubeconfig"])["clusters"][0]["cluster"]["server"].replace("https://", "")
        print("kubeadm join %s --token %s --discovery-token-ca-cert-hash %s " % (server, token, ca_cert_hash(PKI + "/ca.crt")))
    else:
        print(token)


def upload_certs(args):
    flags, _ = parse_flags(args, {"config", "certificate-key", "kubeconfig", "v"}, bool_flags={"upload-certs",
                                                                                            "skip-certificate-key-print"})
    if flags.get("upload-certs") != "true":
        raise Fail("[upload-certs] Skipping phase. Please see --upload-certs")
    key = flags.get("certificate-key") or secrets.token_hex(32)
    if not re.match(r"^[0-9a-f]{64}$", key):
        raise Fail("invalid certificate key %r: it must be 32 bytes, hex encoded" % key)
    files = {f: base64.b64encode(open(os.path.join(PKI, f), "rb").read()).decode() for f in SHARED_CERTS}
    admin_client().request("PUT", "/apis/fake-kube/kubeadm-certs",
                           {"key_sha256": hashlib.sha256(key.encode()).hexdigest(), "files": files})
    print('[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system" Namespace')
    print("[upload-certs] Using certificate key:")
    print(key)


def join(args):
    flags, positional = parse_flags(args, {"config", "ignore-preflight-errors", "v", "token",
                                           "discovery-token-ca-cert-hash", "certificate-key", "node-name",
                                           "apiserver-advertise-address", "cri-socket"},
                                    bool_flags={"control-plane"})
    if "config" not in flags:
        raise Fail("the stand-in needs --config (kiln always passes one)")
    if positional or "token" in flags:
        raise Fail("can not mix '--config' with arguments [discovery-token-ca-cert-hash token]")
    docs = load_config(flags["config"], {"JoinConfiguration"})
    if "JoinConfiguration" not in docs:
        raise Fail("%s: no JoinConfiguration document" % flags["config"])
    cfg = docs["JoinConfiguration"]
    discovery = (cfg.get("discovery") or {}).get("bootstrapToken") or {}
    token, endpoint = discovery.get("token", ""), discovery.get("apiServerEndpoint", "")
    if not TOKEN_RE.match(token):
        raise Fail("discovery.bootstrapToken.token: the bootstrap token %r was not of the form \"[a-z0-9]{6}.[a-z0-9]{16}\"" % token)
    hashes = discovery.get("caCertHashes") or []
    if not hashes or discovery.get("unsafeSkipCAVerification"):
        raise Fail("discovery.bootstrapToken: using token-based discovery without caCertHashes can be unsafe; kiln must pin the CA")
    for h in hashes:
        if not re.match(r"^sha256:[0-9a-f]{64}$", h):
            raise Fail("invalid caCertHash %r" % h)
    node_reg = cfg.get("nodeRegistration") or {}
    name = node_reg.get("name") or socket.gethostname()
    control_plane = cfg.get("controlPlane")
    ignored = set(flags.get("ignore-preflight-errors", "").split(",")) - {""}
    preflight(ignored, [10250] + ([6443, 2379, 2380] if control_plane else []), control_plane=bool(control_plane),
              joining=True)
    if os.path.exists(FAIL_JOIN):
        raise Fail("error execution phase kubelet-start: error uploading crisocket: timed out waiting for the condition\n"
                   "(the stand-in fails on demand: %s exists)" % FAIL_JOIN)
    # Discovery: cluster-info, signed for this token, with a CA matching a pinned hash.
    print("[preflight] Running pre-flight checks\n[discovery] Trying to connect to API Server %r" % endpoint)
    anonymous = Client("https://" + endpoint, insecure=True)
    info = anonymous.request("GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")
    kubeconfig = info["data"]["kubeconfig"]
    signature = info["data"].get("jws-kubeconfig-" + token.split(".")[0])
    if signature is None or not hmac.compare_digest(
            signature, hmac.new(token.encode(), kubeconfig.encode(), "sha256").hexdigest()):
        raise Fail("couldn't validate the identity of the API Server: there is no JWS signed token in the cluster-info ConfigMap for token ID %r" % token.split(".")[0])
    cluster = yaml.safe_load(kubeconfig)["clusters"][0]["cluster"]
    ca = base64.b64decode(cluster["certificate-authority-data"])
    with tempfile.NamedTemporaryFile("wb", suffix=".crt") as t:
        t.write(ca)
        t.flush()
        actual = ca_cert_hash(t.name)
    if actual not in hashes:
        raise Fail("cluster CA found in cluster-info ConfigMap is invalid: none of the public keys \"%s\" are pinned" % actual)
    client = Client(cluster["server"], ca, token=token)
    record("kubeadm", ["join"] + args, "discovered")
    if os.path.exists(JOIN_DELAY):
        time.sleep(float(open(JOIN_DELAY).read().strip() or 0))
    if control_plane:
        join_control_plane(client, control_plane, name, ca, cluster["server"])
    kubelet_cfg = yaml.safe_load(client.request(
        "GET", "/api/v1/namespaces/kube-system/configmaps/kubelet-config")["data"]["kubelet"])
    if not control_plane:
        conf = {"apiVersion": "v1", "kind": "Config", "current-context": "default",
                "clusters": [{"name": "default", "cluster": cluster}],
                "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
                "users": [{"name": "default", "user": {"token": token}}]}
        write_file(K8S + "/kubelet.conf", yaml.safe_dump(conf), 0o600)
    write_file(PKI + "/ca.crt", ca) if not os.path.exists(PKI + "/ca.crt") else None
    kubelet_start(kubelet_cfg, kubelet_args(node_reg))
    wait_for("the kubelet to register node %s" % name, lambda: node_registered(client, name))
    if control_plane:
        mark_control_plane(admin_client(), name)
    print("\nThis node has joined the cluster")
    record("kubeadm", ["join"] + args, "done")


def join_control_plane(client, control_plane, name, ca, server):
    key = control_plane.get("certificateKey", "")
    if not re.match(r"^[0-9a-f]{64}$", key):
        raise Fail("controlPlane.certificateKey %r: it must be 32 bytes, hex encoded" % key)
    certs = client.request("GET", "/apis/fake-kube/kubeadm-certs")
    if certs["key_sha256"] != hashlib.sha256(key.encode()).hexdigest():
        raise Fail("error downloading the secret: error decoding secret data with provided key: cipher: message authentication failed")
    print('[download-certs] Downloading the certificates in Secret "kubeadm-certs" in the "kube-system" Namespace')
    for f, data in certs["files"].items():
        path = os.path.join(PKI, f)
        content = base64.b64decode(data)
        if os.path.exists(path) and open(path, "rb").read() != content:
            raise Fail("[certs] %s differs from the cluster's (uploaded by kubeadm init phase upload-certs)" % path)
        write_file(path, content, 0o600 if f.endswith(".key") else 0o644)
    api = control_plane.get("localAPIEndpoint") or {}
    advertise = api.get("advertiseAddress")
    if advertise not in local_ips():
        raise Fail("controlPlane.localAPIEndpoint.advertiseAddress %r is not an address of this host" % advertise)
    cluster_cfg = yaml.safe_load(client.request(
        "GET", "/api/v1/namespaces/kube-system/configmaps/kubeadm-config")["data"]["ClusterConfiguration"])
    check_control_plane_pki(name, advertise, cluster_cfg)
    write_kubelet_conf_signed(name, ca, server)
    # The state lives with the first API server (etcd's role here); this one forwards to it.
    holder = "https://%s:%s" % (resolve(server.replace("https://", "").rsplit(":", 1)[0]), server.rsplit(":", 1)[1])
    static_pods(advertise, int(api.get("bindPort", 6443)), forward_to=holder)


def write_kubelet_conf_signed(name, ca, server):
    """TLS bootstrap's result on a control-plane node: a client certificate for system:node:NAME
    signed by the cluster CA (which a joined control-plane node holds)."""
    d = tempfile.mkdtemp(prefix="fake-kube-")
    key, csr, crt = d + "/k.key", d + "/k.csr", d + "/k.crt"
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", "/O=system:nodes/CN=system:node:%s" % name)
    openssl("x509", "-req", "-in", csr, "-CA", PKI + "/ca.crt", "-CAkey", PKI + "/ca.key", "-CAcreateserial",
            "-out", crt, "-days", "365")
    b64 = lambda p: base64.b64encode(open(p, "rb").read()).decode()
    conf = {"apiVersion": "v1", "kind": "Config", "current-context": "default",
            "clusters": [{"name": "default", "cluster": {"certificate-authority-data": base64.b64encode(ca).decode(),
                                                         "server": server}}],
            "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
            "users": [{"name": "default", "user": {"client-certificate-data": b64(crt), "client-key-data": b64(key)}}]}
    write_file(K8S + "/kubelet.conf", yaml.safe_dump(conf), 0o600)
    subprocess.run(["rm", "-rf", d])


def reset(args):
    flags, _ = parse_flags(args, {"cri-socket", "v", "ignore-preflight-errors", "kubeconfig"},
                           bool_flags={"force", "f"})
    if "force" not in flags and "f" not in flags:
        raise Fail("the stand-in only runs non-interactively: pass -f")
    subprocess.run(["systemctl", "stop", "kubelet"], capture_output=True)
    # The stand-ins' own state goes too (the API's data as etcd's would, the call log, the
    # virtual servers, which kiln deletes first).
    for path in [MANIFESTS, KUBELET_DIR, "/var/lib/etcd", PKI, STATE, os.path.dirname(LOG)]:
        subprocess.run(["rm", "-rf", path])
    for conf in ["admin.conf", "kubelet.conf", "bootstrap-kubelet.conf", "controller-manager.conf",
                 "scheduler.conf", "super-admin.conf"]:
        if os.path.exists(os.path.join(K8S, conf)):
            os.remove(os.path.join(K8S, conf))
    print("[reset] Deleted contents of the etcd data directory: /var/lib/etcd")
    print("The reset process does not clean CNI configuration. To do so, you must remove /etc/cni/net.d")


# --- kubectl ----------------------------------------------------------------------------------

def kubectl(args):
    record("kubectl", args)
    flags, positional = parse_flags(args, {"kubeconfig", "o", "output", "n", "namespace", "f", "filename",
                                           "timeout", "l", "selector"},
                                    bool_flags={"overwrite", "A", "all-namespaces", "all", "ignore-daemonsets",
                                                "delete-emptydir-data", "force", "ignore-not-found"})
    path = flags.get("kubeconfig") or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    client = Client.from_kubeconfig(path)
    output = flags.get("o") or flags.get("output")
    if not positional:
        raise Fail("kubectl: a command is required")
    verb = positional[0]
    if verb == "version":
        print("Client Version: %s" % VERSION)
        client.request("GET", "/healthz")
        print("Server Version: %s" % VERSION)
    elif verb == "get" and positional[1:2] in (["nodes"], ["node"], ["no"]):
        nodes = client.request("GET", "/api/v1/nodes")
        if len(positional) > 2:
            nodes["items"] = [n for n in nodes["items"] if n["metadata"]["name"] in positional[2:]]
        if output == "json":
            print(json.dumps(nodes, indent=2))
        else:
            print("%-20s %-10s %-30s %s" % ("NAME", "STATUS", "ROLES", "VERSION"))
            for n in nodes["items"]:
                ready = any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
                roles = ",".join(sorted(k.split("/", 1)[1] for k in n["metadata"]["labels"]
                                        if k.startswith("node-role.kubernetes.io/"))) or "<none>"
                print("%-20s %-10s %-30s %s" % (n["metadata"]["name"], "Ready" if ready else "NotReady", roles, VERSION))
    elif verb == "get":
        kind = positional[1].lower().rstrip("s") if len(positional) > 1 else ""
        items = [o for o in client.request("GET", "/apis/fake-kube/objects")["items"] if o["kind"].lower() == kind]
        print(json.dumps({"kind": "List", "items": items}, indent=2) if output == "json"
              else "\n".join("%s/%s" % (o["kind"].lower(), o["metadata"]["name"]) for o in items))
    elif verb in ("label", "taint"):
        if len(positional) < 4 or positional[1] not in ("node", "nodes", "no"):
            raise Fail("error: kubectl %s supports only `node NAME ...` in the stand-in" % verb)
        name = positional[2]
        node = client.request("GET", "/api/v1/nodes/%s" % name)
        overwrite = flags.get("overwrite") == "true"
        for change in positional[3:]:
            (label if verb == "label" else taint)(node, change, overwrite)
        client.request("PUT", "/api/v1/nodes/%s" % name, node)
        print("node/%s %s" % (name, "labeled" if verb == "label" else "modified"))
    elif verb == "apply":
        target = flags.get("f") or flags.get("filename")
        if not target:
            raise Fail("error: must specify one of -f and -k")
        files = [os.path.join(target, f) for f in sorted(os.listdir(target))] if os.path.isdir(target) else [target]
        for path in files:
            if not path.endswith((".yaml", ".yml", ".json")):
                continue
            for doc in yaml.safe_load_all(open(path)):
                if doc is None:
                    continue
                for field in ("apiVersion", "kind"):
                    if not doc.get(field):
                        raise Fail("error: error validating %r: %s not set" % (path, field))
                if not (doc.get("metadata") or {}).get("name"):
                    raise Fail("error: error validating %r: metadata.name not set" % path)
                if flags.get("n") or flags.get("namespace"):
                    doc["metadata"].setdefault("namespace", flags.get("n") or flags.get("namespace"))
                r = client.request("POST", "/apis/fake-kube/objects", doc)
                print("%s/%s %s" % (doc["kind"].lower(), doc["metadata"]["name"], r["result"]))
    elif verb == "drain":
        if len(positional) != 2:
            raise Fail("error: USAGE: kubectl drain NODE [options]")
        objects = client.request("GET", "/apis/fake-kube/objects")["items"]
        if any(o["kind"] == "DaemonSet" for o in objects) and flags.get("ignore-daemonsets") != "true":
            raise Fail("error: cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)")
        name = positional[1]
        node = client.request("GET", "/api/v1/nodes/%s" % name)
        node["spec"]["unschedulable"] = True
        client.request("PUT", "/api/v1/nodes/%s" % name, node)
        print("node/%s cordoned\nnode/%s drained" % (name, name))
    elif verb == "delete" and positional[1:2] in (["node"], ["nodes"]):
        for name in positional[2:]:
            client.request("DELETE", "/api/v1/nodes/%s" % name)
            print('node "%s" deleted' % name)
    else:
        raise Fail("the kubectl stand-in does not implement %r" % " ".join(positional))


def label(node, change, overwrite):
    labels = node["metadata"]["labels"]
    if change.endswith("-"):
        labels.pop(change[:-1], None)
        return
    key, eq, value = change.partition("=")
    if not eq or not re.match(r"^([a-z0-9.-]+/)?[A-Za-z0-9_.-]+$", key):
        raise Fail("error: invalid label spec: %s" % change)
    if key in labels and labels[key] != value and not overwrite:
        raise Fail("error: '%s' already has a value (%s), and --overwrite is false" % (key, labels[key]))
    labels[key] = value


def taint(node, change, overwrite):
    taints = node["spec"].setdefault("taints", [])
    m = re.match(r"^([A-Za-z0-9./_-]+)(=([A-Za-z0-9._-]*))?(:(NoSchedule|PreferNoSchedule|NoExecute))?(-)?$", change)
    if not m or (not m.group(6) and not m.group(5)):
        raise Fail("error: invalid taint spec: %s" % change)
    key, value, effect, remove = m.group(1), m.group(3) or "", m.group(5), m.group(6)
    kept = [t for t in taints if not (t["key"] == key and (effect is None or t["effect"] == effect))]
    if remove:
        node["spec"]["taints"] = kept
        return
    if len(kept) != len(taints) and not overwrite:
        raise Fail("error: node %s already has %s taint(s) with same effect(s) and --overwrite is false"
                   % (node["metadata"]["name"], key))
    entry = {"key": key, "effect": effect}
    if value:
        entry["value"] = value
    node["spec"]["taints"] = kept + [entry]


# --- ipvsadm ----------------------------------------------------------------------------------

def ipvsadm(args):
    record("ipvsadm", args)
    state = read_json(STATE + "/ipvs.json", {"services": []})
    services = state["services"]
    op, service, real, sched, i = None, None, None, "wlc", 0
    numeric = False
    while i < len(args):
        a = args[i]
        if a in ("-A", "-E", "-D", "-a", "-e", "-d", "-C", "-L", "-l", "-S", "-Ln", "-ln"):
            op = a[:2]
            numeric = numeric or a.endswith("n")
        elif a in ("-t",):
            i += 1
            service = args[i]
        elif a in ("-r",):
            i += 1
            real = args[i] if ":" in args[i] else args[i] + ":" + (service or ":").rsplit(":", 1)[1]
        elif a == "-s":
            i += 1
            sched = args[i]
        elif a in ("-m", "-g", "-i", "-n"):
            numeric = numeric or a == "-n"
        elif a == "-w":
            i += 1
        else:
            die("ipvsadm: invalid option -- '%s'" % a, 2)
        i += 1
    find = lambda: next((s for s in services if s["addr"] == service), None)
    for addr in filter(None, [service, real]):
        host, _, port = addr.rpartition(":")
        try:
            ipaddress.ip_address(host)
            int(port)
        except ValueError:
            die("Illegal virtual server address" if addr == service else "Illegal real server address", 2)
    if op == "-A":
        if find():
            die("Service already exists", 1)
        services.append({"addr": service, "scheduler": sched, "reals": []})
    elif op == "-D":
        if not find():
            die("No such service", 1)
        services.remove(find())
    elif op == "-a":
        svc = find()
        if not svc:
            die("Service not defined", 1)
        if any(r["addr"] == real for r in svc["reals"]):
            die("Destination already exists", 1)
        svc["reals"].append({"addr": real, "forward": "Masq"})
    elif op == "-d":
        svc = find()
        if not svc or not any(r["addr"] == real for r in svc["reals"]):
            die("No such destination", 1)
        svc["reals"] = [r for r in svc["reals"] if r["addr"] != real]
    elif op == "-C":
        services.clear()
    elif op in ("-L", "-l"):
        print("IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n"
              "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn")
        for s in services:
            print("TCP  %s %s" % (s["addr"], s["scheduler"]))
            for r in s["reals"]:
                print("  -> %-28s %-7s 1      0          0" % (r["addr"], r["forward"]))
        return
    elif op == "-S":
        for s in services:
            print("-A -t %s -s %s" % (s["addr"], s["scheduler"]))
            for r in s["reals"]:
                print("-a -t %s -r %s -m -w 1" % (s["addr"], r["addr"]))
        return
    else:
        die("ipvsadm: no command given", 2)
    write_file(STATE + "/ipvs.json", json.dumps(state, indent=1), 0o600)


def main():
    tool = os.path.basename(sys.argv[0])
    handlers = {"kubeadm": kubeadm, "kubelet": kubelet, "kubectl": kubectl, "ipvsadm": ipvsadm}
    if tool not in handlers:
        die("fakekube: call me as one of %s" % ", ".join(sorted(handlers)), 2)
    try:
        handlers[tool](sys.argv[1:])
    except Fail as e:
        record(tool, sys.argv[1:], "failed")
        die(str(e) if str(e).startswith(("error", "E:", "unknown", "the ", "W:")) else "error: " + str(e))


if __name__ == "__main__":
    main()
