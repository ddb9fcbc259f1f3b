"""Validates deploy/k8s without a cluster: renders the base and every overlay with
`kubectl kustomize`, checks every object against the Kubernetes schemas with
`kubernetes-validate --strict` (unknown fields and wrong types are errors) for the oldest and
newest Kubernetes versions we support, then checks the rules a statenode StatefulSet must keep
(docs/operations.md). Usage: python3 deploy/k8s/check.py   (exit 1 on the first failure)"""

import os
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ["base", "overlays/memory"]
VERSIONS = ["1.30.0", "1.37.0"]


def render(target):
    out = subprocess.run(["kubectl", "kustomize", os.path.join(HERE, target)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("kubectl kustomize %s failed:\n%s" % (target, out.stderr))
    return out.stdout


def validate(target, text):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        for version in VERSIONS:
            out = subprocess.run(["kubernetes-validate", "--strict", "-k", version, f.name], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit("%s is not valid for Kubernetes %s:\n%s%s" % (target, version, out.stdout, out.stderr))
    finally:
        os.unlink(f.name)


def rule(ok, what):
    if not ok:
        raise AssertionError(what)


def check_rules(target, objects):
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    sts = by_kind["StatefulSet"][0]
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    c = pod["containers"][0]
    ports = {p["name"] for p in c["ports"]}
    env = {e["name"]: e for e in c["env"]}

    rule(services["statenode-peer"]["spec"].get("clusterIP") == "None", "the peer Service is headless")
    rule(services["statenode-peer"]["spec"].get("publishNotReadyAddresses") is True,
         "peers resolve before they are Ready (publishNotReadyAddresses)")
    rule(not services["statenode"]["spec"].get("publishNotReadyAddresses"), "clients reach Ready pods only")
    for s in services.values():
        rule(s["spec"]["selector"].items() <= labels.items(), "Service %s selects the pods" % s["metadata"]["name"])
        for p in s["spec"]["ports"]:
            rule(p["targetPort"] in ports, "Service port %s is a container port" % p["name"])
    rule(spec["serviceName"] == "statenode-peer", "pods get names under the peer Service")
    rule(spec["podManagementPolicy"] == "Parallel", "Parallel pod management (a full restart must not deadlock)")
    rule(spec["selector"]["matchLabels"].items() <= labels.items(), "the StatefulSet selects its pods")
    replicas = spec["replicas"]
    pdb = by_kind["PodDisruptionBudget"][0]["spec"]
    rule(pdb["maxUnavailable"] == max(1, replicas - (replicas // 2 + 1)), "the PDB keeps a quorum")
    rule(pdb["selector"]["matchLabels"].items() <= labels.items(), "the PDB selects the pods (an empty one selects all)")
    rule(c["livenessProbe"]["httpGet"]["path"] == "/livez", "liveness is the process, never the quorum")
    rule(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness is a linearizable read")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        rule(c[probe]["httpGet"]["port"] in ports, "%s port exists" % probe)
    rule("exec" not in c.get("lifecycle", {}).get("preStop", {}), "preStop changes no membership (and the image has no shell)")
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    rule(anti and anti[0]["topologyKey"] == "kubernetes.io/hostname", "one replica per Kubernetes node")
    rule(pod["securityContext"]["runAsNonRoot"] is True, "non-root")
    rule(c["securityContext"]["readOnlyRootFilesystem"] is True, "read-only root filesystem")
    rule("limits" in c["resources"] and "requests" in c["resources"], "resource requests and limits")
    rule(env["STATENODE_ID_FROM_NAME"]["value"] == "$(POD_NAME)", "the node id comes from the pod ordinal")
    rule("statenode-peer" in env["STATENODE_PEER_ADVERTISE"]["value"], "peers advertise stable DNS names")
    for key in ("STATENODE_BOOTSTRAP_EXPECT", "STATENODE_PEERS"):
        rule("configMapKeyRef" in env[key].get("valueFrom", {}), "%s comes from the ConfigMap" % key)
    cm = by_kind["ConfigMap"][0]["data"]
    peers = cm["peers"].split(",")
    rule(len(peers) == replicas == int(cm["bootstrap_expect"]), "one peer per replica, all expected at bootstrap")
    for i, p in enumerate(peers):
        rule(p == "%d=statenode-%d.statenode-peer:7000" % (i + 1, i), "peer %s is pod statenode-%d" % (p, i))
    memory = env.get("STATENODE_MEMORY", {}).get("value") == "true"
    claims = [v["metadata"]["name"] for v in spec.get("volumeClaimTemplates", [])]
    volumes = [v["name"] for v in pod["volumes"]]
    rule(("data" in volumes) if memory else (claims == ["data"]), "data volume (a PVC on disk, emptyDir in memory)")


def main():
    for target in TARGETS:
        text = render(target)
        validate(target, text)
        check_rules(target, [o for o in yaml.safe_load_all(text) if o])
        print("ok:", target)
    print("all Kubernetes manifests valid")


if __name__ == "__main__":
    main()
