#!/usr/bin/env python3
"""Offline checks of deployment files that no stock tool covers; .ci/check-deploy runs them.

  lint.py dockerfile Dockerfile .dockerignore
      The layer order that keeps dependencies cached apart from sources (there is no Docker
      engine to build with here), the non-root numeric user, the healthcheck, the build context.
  lint.py compose RENDERED.yml deploy/prometheus.yml
      On `docker-compose config` output: marketplaces configured with base_url and token_env,
      the worker healthcheck, RabbitMQ's metrics port, the rule files mounted where
      prometheus.yml looks for them, and the image's worker healthcheck overridden elsewhere.
  lint.py secret-example deploy/k8s/secret.example.yaml
      Every value of the example Secret is a placeholder: a real credential pasted there would be
      committed.
  lint.py dashboard DASHBOARD.json RULES_OUT.yml
      Panels (unique ids, no overlap), template variables (defined and used), and every query
      written out as a recording rule so `promtool check rules RULES_OUT.yml` parses its PromQL.

Exit status 1 with one line per problem.
"""

import json
import re
import sys

import yaml

problems = []


def expect(condition, message):
    if not condition:
        problems.append(message)
    return bool(condition)


# --- Dockerfile ---------------------------------------------------------------------------

def dockerfile(path, ignore_path):
    text = open(path).read().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages, current = {}, None
    for line in lines:
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(2) or f"stage{len(stages)}"
            stages[current] = {"base": m.group(1), "lines": []}
        elif current:
            stages[current]["lines"].append(line)
    cook = [n for n, s in stages.items() if any("cargo chef cook" in l for l in s["lines"])]
    prepare = [n for n, s in stages.items() if any("cargo chef prepare" in l for l in s["lines"])]
    expect(prepare, "no stage runs `cargo chef prepare` (the planner)")
    if expect(len(cook) == 1, "exactly one stage must run `cargo chef cook`"):
        body = stages[cook[0]]["lines"]
        at = next(i for i, l in enumerate(body) if "cargo chef cook" in l)
        before = [l for l in body[:at] if l.upper().startswith(("COPY", "ADD"))]
        expect(all("--from=" in l and "recipe.json" in l for l in before),
               f"only the recipe may be copied before `cargo chef cook` (dependency layer): {before}")
        expect("--release" in body[at], "`cargo chef cook` must build --release like the final build")
        after = body[at + 1:]
        build = [i for i, l in enumerate(after) if re.search(r"cargo build\b.*--release", l)]
        copies = [i for i, l in enumerate(after) if l.upper().startswith("COPY") and "src" in l.split()]
        expect(build and copies and copies[0] < build[0],
               "sources must be copied after `cargo chef cook` and before `cargo build --release`")
    final = stages[list(stages)[-1]] if stages else {"base": "", "lines": []}
    expect(re.match(r"debian:[\w.${}-]*slim", final["base"]), f"runtime base must be a slim Debian, is {final['base']}")
    users = [l.split(None, 1)[1] for l in final["lines"] if l.upper().startswith("USER ")]
    expect(users and re.fullmatch(r"10001(:10001)?", users[-1]), f"runtime USER must be numeric 10001, is {users}")
    expect(any(l.upper().startswith("HEALTHCHECK") and "bidorch" in l and "healthcheck" in l.split("CMD", 1)[-1]
               for l in final["lines"]), "runtime HEALTHCHECK must run `bidorch healthcheck`")
    expect(any(l.upper().startswith("COPY") and "config" in l.split() and "--from" not in l for l in final["lines"]),
           "the runtime image must ship config/")
    ignored = {l.strip().rstrip("/") for l in open(ignore_path) if l.strip() and not l.startswith("#")}
    expect({"target", ".git"} <= ignored, f".dockerignore must exclude target/ and .git/ (has {sorted(ignored)})")


# --- docker-compose ----------------------------------------------------------------------

def compose(rendered, prometheus_config):
    services = yaml.safe_load(open(rendered))["services"]
    worker = services.get("worker", {})
    env = worker.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    test = " ".join((worker.get("healthcheck") or {}).get("test") or [])
    expect("bidorch healthcheck" in test, f"worker healthcheck must run `bidorch healthcheck`, is {test!r}")
    expect(str(env.get("BIDORCH__HTTP__ADDR", "")).startswith("0.0.0.0:"),
           "workers must serve HTTP on 0.0.0.0 (Prometheus scrapes them from another container)")
    names = sorted({m.group(1) for k in env if (m := re.fullmatch(r"BIDORCH__MARKETPLACES__(\w+?)__BASE_URL", k))})
    expect(names, "workers configure no marketplace (a deployment bids only on those it configures)")
    for name in names:
        token_env = env.get(f"BIDORCH__MARKETPLACES__{name}__TOKEN_ENV")
        if expect(token_env, f"marketplace {name}: base_url without token_env"):
            expect(env.get(token_env), f"marketplace {name}: token variable {token_env} is not set")
    for name, svc in services.items():
        if svc.get("image") == worker.get("image") and name != "worker":
            hc = svc.get("healthcheck") or {}
            hc_test = " ".join(hc.get("test") or [])
            disabled = hc.get("disable") or hc.get("test") == ["NONE"]  # config renders disable so
            expect(disabled or "--url" in hc_test,
                   f"service {name}: the image's HEALTHCHECK probes a worker's /readyz; disable or --url it")
    ports = json.dumps(services.get("rabbitmq", {}).get("ports"))
    expect("15692" in ports, "rabbitmq must publish rabbitmq_prometheus' port 15692")
    prom = services.get("prometheus", {})
    mounts = {}
    for v in prom.get("volumes") or []:
        if isinstance(v, dict):
            mounts[v.get("target")] = v.get("source", "")
        else:
            source, target = v.split(":")[:2]
            mounts[target] = source
    config_target = next((a for a in prom.get("command") or [] if a.startswith("--config.file=")), "")
    config_dir = config_target.split("=", 1)[-1].rsplit("/", 1)[0]
    for rule_file in yaml.safe_load(open(prometheus_config)).get("rule_files") or []:
        target = f"{config_dir}/{rule_file}"
        expect(str(mounts.get(target, "")).endswith(f"deploy/{rule_file}"),
               f"prometheus: rule file {rule_file} must be mounted at {target} from deploy/{rule_file}")


# --- example Secret -----------------------------------------------------------------------

def secret_example(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    expect(docs and all(d.get("kind") == "Secret" for d in docs), f"{path} must hold only Secrets")
    for d in docs:
        expect(not d.get("data"), f"{path}: use stringData with visible placeholders, not base64 data")
        for key, value in (d.get("stringData") or {}).items():
            userinfo = re.search(r"://([^/@\s]*)@", value)
            secretish = key.endswith(("TOKEN", "PASSWORD", "KEY")) or userinfo
            expect(not secretish or "CHANGE_ME" in (userinfo.group(1) if userinfo else value),
                   f"{path}: {key} must be a CHANGE_ME placeholder, never a real credential")


# --- Grafana dashboard --------------------------------------------------------------------

GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}


def dashboard(path, rules_out):
    try:
        d = json.load(open(path))
    except json.JSONDecodeError as e:
        problems.append(f"{path} is not valid JSON: {e}")
        return
    panels = d.get("panels") or []
    ids = [p.get("id") for p in panels]
    expect(len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}")
    cells, overlaps = {}, set()
    for p in panels:
        g = p.get("gridPos") or {}
        for x in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0)):
            for y in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0)):
                if (x, y) in cells and (cells[(x, y)], p["id"]) not in overlaps:
                    overlaps.add((cells[(x, y)], p["id"]))
                    problems.append(f"panels {cells[(x, y)]} and {p['id']} overlap (at x={x} y={y})")
                cells.setdefault((x, y), p["id"])
        expect(g.get("x", 0) + g.get("w", 0) <= 24, f"panel {p['id']} is wider than the grid")
    variables = {v["name"]: v for v in (d.get("templating") or {}).get("list") or []}
    for needed in ("marketplace", "instance"):
        expect(needed in variables, f"template variable ${needed} is missing")
    values = {name: (".*" if v.get("type") == "query" else v.get("query", "")) for name, v in variables.items()}
    values.update(GRAFANA_BUILTINS)
    used, rules = set(), []
    for p in panels:
        for t in p.get("targets") or []:
            expr = t.get("expr")
            if not expect(expr, f"panel {p['id']} target {t.get('refId')} has no expr"):
                continue

            def substitute(m):
                name = m.group(1) or m.group(2)
                used.add(name)
                if not expect(name in values, f"panel {p['id']}: unknown variable ${name}"):
                    return ".*"
                return values[name]

            rules.append({"record": f"dashboard:panel{p['id']}_{t.get('refId', 'X')}",
                          "expr": re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", substitute, expr)})
    for name in variables:
        expect(name in used, f"template variable ${name} is defined but no query uses it")
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)
    print(f"{len(panels)} panels, {len(rules)} queries, variables: {', '.join(variables)}")


def main(argv):
    commands = {"dockerfile": (dockerfile, 2), "compose": (compose, 2), "dashboard": (dashboard, 2),
                "secret-example": (secret_example, 1)}
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        sys.exit(__doc__)
    commands[argv[1]][0](*argv[2:])
    for problem in problems:
        print(f"ERROR {argv[1]}: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
