#!/usr/bin/env python3
"""Offline checks of rendered kustomize output; .ci/check-deploy runs it on every overlay.

kubernetes-validate knows only core Kubernetes kinds: it skips a CRD with a warning and exit 0.
So this script checks each document of a rendered overlay itself:
  - core kinds against the pinned Kubernetes schema (strict: unknown fields are errors), through
    kubernetes-validate's library; an unknown core kind is an error here, not a warning;
  - KEDA kinds (ScaledObject, TriggerAuthentication) for the fields KEDA requires and the values
    bidorch depends on;
  - the invariants bidorch relies on across objects: names that must agree (scale target, trigger
    authentication, Secret, selectors), probes on the worker's http.addr, a termination grace
    above worker.shutdown_grace, credentials only from Secrets, and the pod security baseline.

Usage: validate.py K8S_VERSION RENDERED.yaml[=LABEL]...   (needs PyYAML and kubernetes-validate)
"""

import re
import sys

import yaml
from kubernetes_validate import utils as kv

SHUTDOWN_GRACE_DEFAULT = "20s"  # worker.shutdown_grace default (config/default.toml)
GRACE_MARGIN_S = 15  # time after the drain for releasing leases, closing, exiting
PREFETCH_DEFAULT = 100  # amqp.prefetch default
QUEUE_DEFAULT = "bidorch.postings"  # amqp.queue default
RUN_AS = 10001  # the image's numeric user and group (Dockerfile)
SECRET_VARS = ("AMQP_URL", "REDIS_URL", "DATABASE_URL")


def seconds(duration):
    """A config duration ("20s", "500ms", "2m") in seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration).strip())
    if not m:
        raise ValueError(f"unparsable duration {duration!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


class Checker:
    def __init__(self, version, source):
        self.version = version
        self.source = source
        self.errors = []

    def fail(self, doc, message):
        where = f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"
        self.errors.append(f"{self.source}: {where}: {message}")

    def expect(self, doc, condition, message):
        if not condition:
            self.fail(doc, message)
        return bool(condition)

    # --- schema ---------------------------------------------------------------------------

    def schema(self, doc):
        try:
            kv.validate(doc, self.version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            self.fail(doc, f"schema (Kubernetes {self.version}): {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            self.fail(doc, f"unknown kind: {e.message}")

    # --- KEDA -----------------------------------------------------------------------------

    def scaled_object(self, so, by_kind, worker_env):
        spec = so.get("spec") or {}
        target = spec.get("scaleTargetRef") or {}
        name = target.get("name")
        self.expect(so, name, "spec.scaleTargetRef.name is required")
        kind = target.get("kind", "Deployment")
        deployment = by_kind.get(kind, {}).get(name)
        if self.expect(so, deployment, f"scale target {kind}/{name} is not in the same output"):
            self.expect(so, "replicas" not in deployment["spec"],
                        f"{kind}/{name} sets spec.replicas: the HPA owns it, a re-apply would reset it")
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        self.expect(so, isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1,
                    f"need 0 <= minReplicaCount ({lo}) <= maxReplicaCount ({hi}), max >= 1")
        fallback = spec.get("fallback")
        if fallback is not None:
            self.expect(so, isinstance(fallback.get("failureThreshold"), int)
                        and isinstance(fallback.get("replicas"), int),
                        "fallback needs integer failureThreshold and replicas")
            self.expect(so, lo <= fallback.get("replicas", 0) <= hi,
                        "fallback.replicas must lie within min/maxReplicaCount")
        triggers = spec.get("triggers") or []
        self.expect(so, triggers, "spec.triggers must not be empty")
        for i, trigger in enumerate(triggers):
            self.expect(so, trigger.get("type"), f"triggers[{i}].type is required")
            if trigger.get("type") == "rabbitmq":
                self.rabbitmq_trigger(so, i, trigger, by_kind, worker_env)

    def rabbitmq_trigger(self, so, i, trigger, by_kind, worker_env):
        meta = trigger.get("metadata") or {}
        at = f"triggers[{i}]"
        self.expect(so, all(isinstance(v, str) for v in meta.values()),
                    f"{at}.metadata values must be strings (KEDA's CRD types them so)")
        self.expect(so, "host" not in meta and "password" not in meta,
                    f"{at}: the broker URL carries credentials: give it through a TriggerAuthentication")
        queue = worker_env.get("BIDORCH__AMQP__QUEUE", QUEUE_DEFAULT)
        self.expect(so, meta.get("queueName") == queue,
                    f"{at}.metadata.queueName is {meta.get('queueName')!r}, the workers consume {queue!r}")
        mode = meta.get("mode")
        self.expect(so, mode == "QueueLength", f"{at}.metadata.mode must be QueueLength, is {mode!r}")
        protocol = meta.get("protocol", "auto")
        self.expect(so, protocol in ("amqp", "http", "auto"), f"{at}: unknown protocol {protocol!r}")
        try:
            value = float(meta.get("value", ""))
        except ValueError:
            value = 0.0
        self.expect(so, value > 0, f"{at}.metadata.value must be a positive number")
        prefetch = int(worker_env.get("BIDORCH__AMQP__PREFETCH", PREFETCH_DEFAULT))
        if protocol == "http" and meta.get("excludeUnacknowledged", "false") != "true":
            self.expect(so, value >= prefetch,
                        f"{at}: counting unacked messages, value {value} < amqp.prefetch {prefetch} scales to max")
        auth = (trigger.get("authenticationRef") or {}).get("name")
        if self.expect(so, auth, f"{at}.authenticationRef.name is required (the broker URL)"):
            self.expect(so, auth in by_kind.get("TriggerAuthentication", {}),
                        f"{at}: TriggerAuthentication {auth!r} is not in the same output")

    def trigger_authentication(self, ta, worker_secrets):
        refs = (ta.get("spec") or {}).get("secretTargetRef") or []
        self.expect(ta, refs, "spec.secretTargetRef must not be empty")
        for i, ref in enumerate(refs):
            for field in ("parameter", "name", "key"):
                self.expect(ta, isinstance(ref.get(field), str) and ref.get(field),
                            f"secretTargetRef[{i}].{field} is required")
        host = [r for r in refs if r.get("parameter") == "host"]
        if self.expect(ta, host, "a secretTargetRef with parameter `host` is required"):
            pair = (host[0].get("name"), host[0].get("key"))
            self.expect(ta, not worker_secrets or pair in worker_secrets,
                        f"host comes from Secret {pair[0]!r} key {pair[1]!r}, which the workers do not "
                        f"read: KEDA and the workers should share one Secret")

    # --- pods -----------------------------------------------------------------------------

    def pod_security(self, doc, pod):
        ctx = pod.get("securityContext") or {}
        self.expect(doc, ctx.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot must be true")
        self.expect(doc, ctx.get("runAsUser") == RUN_AS and ctx.get("runAsGroup") == RUN_AS,
                    f"pod must run as numeric user and group {RUN_AS}")
        self.expect(doc, pod.get("automountServiceAccountToken") is False,
                    "automountServiceAccountToken must be false (bidorch never calls the API)")
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for c in pod.get("containers") or []:
            sc = c.get("securityContext") or {}
            who = f"container {c.get('name')!r}"
            seccomp = (sc.get("seccompProfile") or ctx.get("seccompProfile") or {}).get("type")
            self.expect(doc, seccomp == "RuntimeDefault", f"{who}: seccompProfile must be RuntimeDefault")
            self.expect(doc, sc.get("readOnlyRootFilesystem") is True, f"{who}: readOnlyRootFilesystem")
            self.expect(doc, sc.get("allowPrivilegeEscalation") is False, f"{who}: allowPrivilegeEscalation: false")
            self.expect(doc, "ALL" in ((sc.get("capabilities") or {}).get("drop") or []),
                        f"{who}: capabilities.drop must include ALL")
            tmp = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/tmp"]
            self.expect(doc, tmp and "emptyDir" in volumes.get(tmp[0]["name"], {}),
                        f"{who}: /tmp must be an emptyDir (the root filesystem is read-only)")
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                self.expect(doc, {"cpu", "memory"} <= set(res.get(kind) or {}),
                            f"{who}: resources.{kind} needs cpu and memory")
            for env in c.get("env") or []:
                literal = env.get("value")
                if literal is None:
                    continue
                self.expect(doc, env["name"] not in SECRET_VARS and not env["name"].endswith("_TOKEN"),
                            f"{who}: {env['name']} must come from a Secret (secretKeyRef), not a literal")
                self.expect(doc, not re.search(r"://[^/@\s]*:[^/@\s]*@", literal),
                            f"{who}: {env['name']} has credentials in a literal URL")

    def worker(self, dep, container, env_list, pod_labels, by_kind):
        env = {e["name"]: e for e in env_list}
        value = {k: e.get("value") for k, e in env.items()}
        addr = value.get("BIDORCH__HTTP__ADDR") or ""
        m = re.fullmatch(r"(0\.0\.0\.0|\[::\]):(\d+)", addr)
        if self.expect(dep, m, f"BIDORCH__HTTP__ADDR must bind all interfaces for probes, is {addr!r}"):
            port = int(m.group(2))
            named = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = (container.get(probe) or {}).get("httpGet") or {}
                target = named.get(get.get("port"), get.get("port"))
                self.expect(dep, get.get("path") == path and target == port,
                            f"{probe} must GET {path} on port {port}, is {get.get('path')} on {target}")
        instance = ((env.get("BIDORCH__WORKER__INSTANCE_ID") or {}).get("valueFrom") or {}).get("fieldRef") or {}
        self.expect(dep, instance.get("fieldPath") == "metadata.name",
                    "BIDORCH__WORKER__INSTANCE_ID must come from the pod name (fieldRef metadata.name)")
        grace = seconds(value.get("BIDORCH__WORKER__SHUTDOWN_GRACE") or SHUTDOWN_GRACE_DEFAULT)
        pod = dep["spec"]["template"]["spec"]
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        self.expect(dep, tgps >= grace + GRACE_MARGIN_S,
                    f"terminationGracePeriodSeconds {tgps} must exceed worker.shutdown_grace ({grace:g}s) "
                    f"by {GRACE_MARGIN_S}s")
        for var in SECRET_VARS:
            self.expect(dep, ((env.get(var) or {}).get("valueFrom") or {}).get("secretKeyRef"),
                        f"{var} must come from a Secret (secretKeyRef)")
        for name in env:
            m = re.fullmatch(r"BIDORCH__MARKETPLACES__([A-Z0-9_]+?)__BASE_URL", name)
            if not m:
                continue
            token_env = value.get(f"BIDORCH__MARKETPLACES__{m.group(1)}__TOKEN_ENV")
            if self.expect(dep, token_env, f"marketplace {m.group(1)} has a base_url but no TOKEN_ENV"):
                ref = ((env.get(token_env) or {}).get("valueFrom") or {}).get("secretKeyRef")
                self.expect(dep, ref, f"{token_env} (token of {m.group(1)}) must come from a Secret")
        for kind in ("PodDisruptionBudget", "Service"):
            matched = [o for o in by_kind.get(kind, {}).values()
                       if selects(o, pod_labels) and o["metadata"].get("name") == dep["metadata"]["name"]]
            self.expect(dep, matched, f"no {kind} named {dep['metadata']['name']} selects the worker pods")

    # --- driver ---------------------------------------------------------------------------

    def run(self, docs):
        by_kind = {}
        for doc in docs:
            by_kind.setdefault(doc.get("kind"), {})[doc.get("metadata", {}).get("name")] = doc
        workers, worker_env, worker_secrets = [], {}, set()
        for doc in docs:
            pod = pod_spec(doc)
            if pod is None:
                continue
            for c in pod.get("containers") or []:
                if "worker" in (c.get("command") or []) + (c.get("args") or []):
                    workers.append((doc, c, pod))
                    for e in c.get("env") or []:
                        worker_env[e["name"]] = e.get("value")
                        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                        if ref:
                            worker_secrets.add((ref.get("name"), ref.get("key")))
        counts = {"core": 0, "keda": 0}
        for doc in docs:
            api = doc.get("apiVersion", "")
            if api.startswith("keda.sh/"):
                counts["keda"] += 1
                if doc.get("kind") == "ScaledObject":
                    self.scaled_object(doc, by_kind, worker_env)
                elif doc.get("kind") == "TriggerAuthentication":
                    self.trigger_authentication(doc, worker_secrets)
                else:
                    self.fail(doc, "unexpected KEDA kind")
                continue
            counts["core"] += 1
            self.schema(doc)
            pod = pod_spec(doc)
            if pod is not None:
                self.pod_security(doc, pod)
        for dep, container, pod in workers:
            labels = dep["spec"]["template"]["metadata"].get("labels") or {}
            self.worker(dep, container, container.get("env") or [], labels, by_kind)
        if not workers and "ScaledObject" in by_kind:
            self.errors.append(f"{self.source}: a ScaledObject but no worker Deployment")
        return counts


def pod_spec(doc):
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return ((doc.get("spec") or {}).get("template") or {}).get("spec")
    return None


def selects(obj, labels):
    selector = (obj.get("spec") or {}).get("selector") or {}
    wanted = selector.get("matchLabels", selector) if obj["kind"] != "Service" else selector
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    version, failed = argv[1], False
    for arg in argv[2:]:
        path, _, label = arg.partition("=")
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        checker = Checker(version, label or path)
        counts = checker.run(docs)
        for error in checker.errors:
            print(f"ERROR {error}")
        failed |= bool(checker.errors)
        status = "FAILED" if checker.errors else "ok"
        print(f"{status}: {label or path}: {counts['core']} core documents (Kubernetes {version} schema), "
              f"{counts['keda']} KEDA documents, bidorch invariants")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
