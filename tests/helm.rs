//! The Helm chart with the real `helm` CLI (built from its Go module by hack/build-tools)
//! against the real API server, and the Argo CD health check in a real Lua interpreter.

mod support;

use std::process::{Command, Stdio};

use std::io::Write;

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} must be on PATH (hack/test-env puts it there): {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The arguments of the installed controller's container.
fn controller_args(namespace: &str) -> (bool, String) {
    run(
        "kubectl",
        &[
            "get",
            "deployment",
            "hookline-controller",
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ],
        None,
    )
}

fn chart() -> String {
    support::repo_path("charts/hookline").display().to_string()
}

/// The test API server's version, for `helm template` (which otherwise assumes an old one).
fn kube_version() -> String {
    let versions = std::fs::read_to_string(support::repo_path("hack/versions.env")).unwrap();
    let version = versions
        .lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .expect("K8S_VERSION in hack/versions.env");
    format!("--kube-version={version}")
}

fn all_features() -> String {
    support::repo_path("charts/hookline/ci/all-features-values.yaml")
        .display()
        .to_string()
}

#[test]
fn the_chart_ships_the_generated_crds() {
    let generated = hookline::api::crds_yaml().unwrap();
    let in_chart = std::fs::read_to_string(support::repo_path("charts/hookline/crds/hookline.yaml")).unwrap();
    assert!(
        generated == in_chart,
        "charts/hookline/crds/hookline.yaml differs from the types; run hack/generate"
    );
}

#[test]
fn helm_lint_is_strictly_clean() {
    for values in [None, Some(all_features())] {
        let mut args = vec!["lint", "--strict", "--quiet"];
        let chart = chart();
        args.push(&chart);
        if let Some(values) = &values {
            args.extend(["-f", values]);
        }
        let (ok, output) = run("helm", &args, None);
        assert!(ok, "helm {args:?}:\n{output}");
    }
}

#[test]
fn values_schema_refuses_nonsense() {
    let template = |set: &str| {
        run(
            "helm",
            &["template", "t", &chart(), &kube_version(), "--set", set],
            None,
        )
    };
    let (ok, output) = template("gateway.replicas=2");
    assert!(ok, "a valid value renders: {output}");
    let (ok, output) = template("gateway.replicas=0");
    assert!(
        !ok && output.contains("values don't meet the specifications of the schema"),
        "{output}"
    );
    assert!(output.contains("replicas"), "the error names the field: {output}");
    let (ok, output) = template("gatewy.replicas=2");
    assert!(
        !ok && output.contains("gatewy"),
        "a misspelt key must be refused: {output}"
    );
    let (ok, output) = template("image.repository=hookline:dev");
    assert!(
        !ok && output.contains("/image/repository"),
        "a tag inside image.repository must be refused: {output}"
    );
    let (ok, output) = template("gateway.eventBatching=fast");
    assert!(
        !ok && output.contains("eventBatching"),
        "only the gateway's batchings: {output}"
    );
}

#[test]
fn the_chart_gives_its_image_and_pull_policy_to_the_gateway() {
    let (ok, output) = run(
        "helm",
        &[
            "template",
            "t",
            &chart(),
            &kube_version(),
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "imagePullSecrets[0].name=regcred",
            "--show-only",
            "templates/controller.yaml",
            "--show-only",
            "templates/serviceaccounts.yaml",
        ],
        None,
    );
    assert!(ok, "{output}");
    assert!(
        output.contains("image: hookline:dev"),
        "the default image is what hack/image and `docker build -t hookline:dev .` build: {output}"
    );
    assert!(
        output.contains("- name: HOOKLINE_GATEWAY_IMAGE\n              value: hookline:dev"),
        "{output}"
    );
    assert!(
        output.contains("- name: HOOKLINE_GATEWAY_IMAGE_PULL_POLICY\n              value: Never"),
        "{output}"
    );
    let (ok, traced) = run(
        "helm",
        &[
            "template",
            "t",
            &chart(),
            &kube_version(),
            "--set",
            "tracing.otlpEndpoint=http://otel-collector.observability:4318",
            "--set",
            "tracing.env[0].name=OTEL_TRACES_SAMPLER,tracing.env[0].value=parentbased_traceidratio",
            "--show-only",
            "templates/controller.yaml",
        ],
        None,
    );
    assert!(ok, "{traced}");
    assert!(
        traced.contains(
            "- name: OTEL_EXPORTER_OTLP_ENDPOINT\n              value: \"http://otel-collector.observability:4318\""
        ) && traced.contains("- name: OTEL_TRACES_SAMPLER\n              value: parentbased_traceidratio"),
        "the controller gets the OTEL_* settings it passes on to the gateway: {traced}"
    );
    assert!(!output.contains("OTEL_"), "no tracing unless asked for: {output}");
    let gateway_sa = output
        .split("---")
        .find(|d| d.contains("kind: ServiceAccount") && d.contains("name: hookline-gateway\n"))
        .expect("the gateway's ServiceAccount");
    assert!(
        gateway_sa.contains("imagePullSecrets:\n  - name: regcred"),
        "the gateway's pods get the pull secrets: {gateway_sa}"
    );
}

/// The monitoring CRDs the all-features rendering uses are not part of a bare API server;
/// minimal stand-ins (no schema) let the server validate everything else.
async fn install_monitoring_crds(client: &kube::Client) {
    let crd = |kind: &str, plural: &str| {
        format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {plural}.monitoring.coreos.com}}\n\
             spec:\n  group: monitoring.coreos.com\n  scope: Namespaced\n  names: {{kind: {kind}, plural: {plural}, singular: {s}}}\n\
             \x20 versions: [{{name: v1, served: true, storage: true, schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}]\n",
            s = plural.trim_end_matches('s')
        )
    };
    let yaml = format!(
        "{}---\n{}",
        crd("ServiceMonitor", "servicemonitors"),
        crd("PrometheusRule", "prometheusrules")
    );
    support::apply_yaml(client, "default", &yaml)
        .await
        .expect("stand-in monitoring CRDs");
    for name in [
        "servicemonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
    ] {
        let (ok, output) = run(
            "kubectl",
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                &format!("crd/{name}"),
            ],
            None,
        );
        assert!(ok, "{output}");
    }
}

#[tokio::test]
async fn rendered_manifests_pass_server_side_validation() {
    let client = support::kube_client().await;
    install_monitoring_crds(&client).await;
    let ns = support::temp_namespace(&client, "hl-chart").await;
    let chart = chart();
    let all_features = all_features();
    for (what, extra) in [
        ("defaults", vec![]),
        ("every feature", vec!["-f", all_features.as_str()]),
    ] {
        let kube_version = kube_version();
        let mut args = vec![
            "template",
            "hookline",
            chart.as_str(),
            "-n",
            ns.as_str(),
            kube_version.as_str(),
        ];
        args.extend(extra);
        let (ok, manifests) = run("helm", &args, None);
        assert!(ok, "helm template ({what}):\n{manifests}");
        for kind in ["kind: Deployment", "kind: ClusterRole", "kind: Role"] {
            assert!(manifests.contains(kind), "{what}: no {kind}");
        }
        if what == "every feature" {
            for kind in [
                "kind: Ingress",
                "kind: ServiceMonitor",
                "kind: PrometheusRule",
                "hookline-dashboard",
                "--gateway-admin-token-secret=hookline-admin/token",
                "--gateway-publish-token-secret=hookline-publish/token",
            ] {
                assert!(manifests.contains(kind), "{what}: no {kind}");
            }
        }
        let (ok, output) = run(
            "kubectl",
            &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
            Some(&manifests),
        );
        assert!(ok, "server-side dry run ({what}):\n{output}");
    }
}

fn can_i(as_user: &str, args: &[&str]) -> bool {
    let mut full = vec!["auth", "can-i", "--as", as_user];
    full.extend(args);
    let (_, output) = run("kubectl", &full, None);
    output.trim().starts_with("yes")
}

#[tokio::test]
async fn helm_install_creates_a_least_privilege_installation() {
    let client = support::kube_client().await;
    let ns = support::temp_namespace(&client, "hl-install").await;
    let other = support::temp_namespace(&client, "hl-other").await;
    let release = format!("hookline-{}", &ns[ns.len() - 6..]);
    let (ok, output) = run("helm", &["install", &release, &chart(), "-n", &ns], None);
    assert!(ok, "helm install:\n{output}");
    assert!(
        output.contains("Providers post to"),
        "NOTES.txt is shown: {output}"
    );
    assert!(
        output.contains("Image: hookline:dev (pullPolicy IfNotPresent)"),
        "NOTES.txt names the image the release runs: {output}"
    );
    for (kind, name) in [
        ("deployment", "hookline-controller"),
        ("serviceaccount", "hookline-controller"),
        ("serviceaccount", "hookline-gateway"),
        ("role", "hookline-gateway"),
        ("service", "hookline-controller-metrics"),
    ] {
        let (ok, output) = run("kubectl", &["get", kind, name, "-n", &ns], None);
        assert!(ok, "{kind}/{name}: {output}");
    }
    let (ok, output) = controller_args(&ns);
    assert!(
        ok && output.contains("--gateway-database-secret=hookline-database/url"),
        "{output}"
    );

    let gateway = format!("system:serviceaccount:{ns}:hookline-gateway");
    let controller = format!("system:serviceaccount:{ns}:hookline-controller");
    assert!(
        can_i(&gateway, &["get", "secrets", "-n", &ns]),
        "the gateway reads Secrets in its namespace"
    );
    assert!(
        !can_i(&gateway, &["get", "secrets", "-n", &other]),
        "the gateway cannot read Secrets elsewhere"
    );
    assert!(
        !can_i(&gateway, &["create", "secrets", "-n", &ns]),
        "the gateway does not write Secrets"
    );
    assert!(can_i(
        &gateway,
        &["list", "webhooksources.hookline.dev", "--all-namespaces"]
    ));
    assert!(!can_i(
        &gateway,
        &["patch", "webhooksources.hookline.dev", "-n", &other]
    ));
    assert!(can_i(
        &controller,
        &[
            "patch",
            "webhooksubscriptions.hookline.dev",
            "--subresource=status",
            "-n",
            &other
        ]
    ));
    assert!(can_i(
        &controller,
        &[
            "patch",
            "webhookreplays.hookline.dev",
            "--subresource=status",
            "-n",
            &other
        ]
    ));
    assert!(can_i(
        &controller,
        &["update", "leases.coordination.k8s.io", "-n", &ns]
    ));
    assert!(can_i(&controller, &["patch", "deployments.apps", "-n", &ns]));
    assert!(
        !can_i(&controller, &["patch", "deployments.apps", "-n", &other]),
        "the controller manages workloads in its namespace only"
    );
    assert!(
        !can_i(&controller, &["delete", "secrets", "-n", &other]),
        "the controller deletes only its mirrors"
    );
    assert!(!can_i(&controller, &["get", "pods", "-n", &other]));
    assert!(
        can_i(&controller, &["get", "secrets", "-n", &other]),
        "the controller reads the Secrets resources name"
    );
    for verb in ["list", "watch"] {
        assert!(
            !can_i(&controller, &[verb, "secrets", "-n", &other]),
            "the controller cannot {verb} Secrets: it gets them by name"
        );
    }
    assert!(can_i(&controller, &["create", "secrets", "-n", &other]));

    // RBAC lets it create Secrets; the admission policy says which: real attempts, as the
    // controller's ServiceAccount.
    let as_controller = |args: &[&str], manifest: Option<&str>| {
        let mut full = vec!["--as", controller.as_str()];
        full.extend(args);
        run("kubectl", &full, manifest)
    };
    let secret = |name: &str, type_: &str, labelled: bool| {
        let labels = if labelled {
            "labels: { app.kubernetes.io/managed-by: hookline-controller }, "
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{ name: {name}, namespace: {other}, {labels}\
             annotations: {{ kubernetes.io/service-account.name: default }} }}\ntype: {type_}\n"
        )
    };
    let create = |manifest: String| as_controller(&["create", "-f", "-"], Some(&manifest));
    // The policy is enforced a moment after it is created.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let token = loop {
        let (created, output) = create(secret(
            "minted-token",
            "kubernetes.io/service-account-token",
            true,
        ));
        if !created {
            break output;
        }
        run(
            "kubectl",
            &["delete", "secret", "minted-token", "-n", &other],
            None,
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the admission policy never refused a service-account token"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(
        token.contains("creates and updates Opaque Secrets only"),
        "{token}"
    );
    let (created, output) = create(secret("unlabelled", "Opaque", false));
    assert!(!created && output.contains("must be labelled"), "{output}");
    let (created, output) = create(secret("signing", "Opaque", true));
    assert!(
        created,
        "a labelled Opaque Secret is what it may create: {output}"
    );
    // In its own namespace it may update Secrets (its mirrors), but not one it does not manage.
    let (ok, output) = run(
        "kubectl",
        &[
            "create",
            "secret",
            "generic",
            "hookline-database",
            "-n",
            &ns,
            "--from-literal=url=postgres://x",
        ],
        None,
    );
    assert!(ok, "{output}");
    let (changed, output) = as_controller(
        // Claiming it by adding the label is the one change that would pass the other rules.
        &[
            "label",
            "secret",
            "hookline-database",
            "-n",
            &ns,
            "app.kubernetes.io/managed-by=hookline-controller",
        ],
        None,
    );
    assert!(
        !changed && output.contains("changes and deletes only Secrets it manages"),
        "{output}"
    );
    let (deleted, output) = as_controller(&["delete", "secret", "hookline-database", "-n", &ns], None);
    assert!(!deleted, "{output}");

    let (ok, output) = run("helm", &["uninstall", &release, "-n", &ns], None);
    assert!(ok, "helm uninstall: {output}");
    let (ok, _) = run("kubectl", &["get", "crd", "webhooksources.hookline.dev"], None);
    assert!(
        ok,
        "the CRDs (and so every source and subscription) survive an uninstall"
    );
}

/// With watchNamespaces the controller's and the gateway's cluster-wide rules are bound in those
/// namespaces only, and the controller is told to watch them.
#[tokio::test]
async fn watch_namespaces_bind_the_roles_there_only() {
    let client = support::kube_client().await;
    let ns = support::temp_namespace(&client, "hl-scoped").await;
    let watched = support::temp_namespace(&client, "hl-team").await;
    let other = support::temp_namespace(&client, "hl-elsewhere").await;
    let release = format!("hookline-{}", &ns[ns.len() - 6..]);
    let set = format!("watchNamespaces={{{watched}}}");
    let (ok, output) = run(
        "helm",
        &["install", &release, &chart(), "-n", &ns, "--set", &set],
        None,
    );
    assert!(ok, "helm install:\n{output}");
    let controller = format!("system:serviceaccount:{ns}:hookline-controller");
    let gateway = format!("system:serviceaccount:{ns}:hookline-gateway");
    for (who, args, expected) in [
        (&controller, vec!["get", "secrets", "-n", &watched], true),
        (&controller, vec!["create", "secrets", "-n", &watched], true),
        (&controller, vec!["get", "secrets", "-n", &other], false),
        (&controller, vec!["create", "secrets", "-n", &other], false),
        (
            &controller,
            vec!["patch", "webhooksources.hookline.dev", "-n", &watched],
            true,
        ),
        (
            &controller,
            vec!["list", "webhooksources.hookline.dev", "--all-namespaces"],
            false,
        ),
        (
            &gateway,
            vec!["list", "webhooksubscriptions.hookline.dev", "-n", &watched],
            true,
        ),
        (
            &gateway,
            vec!["list", "webhooksubscriptions.hookline.dev", "-n", &other],
            false,
        ),
        (
            &controller,
            vec!["update", "leases.coordination.k8s.io", "-n", &ns],
            true,
        ),
    ] {
        assert_eq!(can_i(who, &args), expected, "{who} {args:?}");
    }
    let (ok, output) = controller_args(&ns);
    assert!(
        ok && output.contains(&format!("--watch-namespaces={watched}")),
        "{output}"
    );
    let (ok, output) = run("helm", &["uninstall", &release, "-n", &ns], None);
    assert!(ok, "helm uninstall: {output}");
    for namespace in [&ns, &watched, &other] {
        support::delete_namespace(&client, namespace).await;
    }
}

#[test]
fn argocd_health_check_follows_conditions_and_generation() {
    let (ok, output) = run(
        "lua5.4",
        &[
            &support::repo_path("tests/argocd/run.lua").display().to_string(),
            &support::repo_path("charts/hookline/files/argocd-health.lua")
                .display()
                .to_string(),
        ],
        None,
    );
    assert!(ok, "lua5.4: {output}");
    let statuses: Vec<(&str, &str)> = output
        .lines()
        .map(|l| {
            let mut p = l.splitn(3, ' ');
            (p.next().unwrap(), p.next().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("new", "Progressing"),
            ("stale-generation", "Progressing"),
            ("ready-source", "Healthy"),
            ("secret-missing", "Degraded"),
            ("healthy-subscription", "Healthy"),
            ("circuit-open", "Degraded"),
            ("paused", "Suspended"),
            ("source-keys-blocked", "Degraded"),
            ("replay-enqueuing", "Progressing"),
            ("replay-complete", "Healthy"),
            ("replay-failed", "Degraded"),
        ]
    );
    assert!(
        output.contains("secret-missing Degraded SecretNotFound: Secret s not found"),
        "{output}"
    );
}

/// Behind the chart's Ingress every client address is the ingress pod's: trusted proxies,
/// scoped token files and extra arguments reach the managed gateway through the controller, and
/// so do the operator's egress ranges (the controller passes its own to the gateway).
#[test]
fn the_chart_configures_the_managed_gateway() {
    let (ok, output) = run(
        "helm",
        &[
            "template",
            "t",
            &chart(),
            &kube_version(),
            "--set",
            "gateway.trustedProxies={10.42.0.0/16}",
            "--set",
            "gateway.extraArgs={--request-timeout=10s}",
            "--set",
            "gateway.eventBatching=paced",
            "--set",
            "publish.scopedTokens.existingSecret=team-publish-tokens",
            "--set",
            "admin.scopedTokens.existingSecret=team-admin-tokens",
            "--set",
            "egress.deny={10.0.0.0/8,192.168.0.0/16}",
            "--set",
            "egress.allow={10.96.7.0/24}",
            "--show-only",
            "templates/controller.yaml",
        ],
        None,
    );
    assert!(ok, "{output}");
    for arg in [
        "- --egress-deny=10.0.0.0/8,192.168.0.0/16",
        "- --egress-allow=10.96.7.0/24",
        "- --gateway-arg=--trusted-proxies=10.42.0.0/16",
        "- --gateway-arg=--request-timeout=10s",
        "- --gateway-arg=--event-batching=paced",
        "- --gateway-publish-tokens-secret=team-publish-tokens/tokens",
        "- --gateway-admin-tokens-secret=team-admin-tokens/tokens",
    ] {
        assert!(
            output.contains(arg),
            "{arg} in the controller's arguments:\n{output}"
        );
    }
    let (ok, output) = run(
        "helm",
        &[
            "template",
            "t",
            &chart(),
            &kube_version(),
            "--set",
            "gateway.extraArgs={request-timeout}",
        ],
        None,
    );
    assert!(
        !ok && output.contains("extraArgs"),
        "extra arguments are flags: {output}"
    );
}

/// The gateway's admin port is open to the release namespace and the listed ones only.
#[test]
fn the_chart_fences_the_admin_port() {
    let (ok, output) = run(
        "helm",
        &[
            "template",
            "t",
            &chart(),
            &kube_version(),
            "-n",
            "hookline-system",
            "--set",
            "networkPolicy.adminNamespaces={monitoring}",
            "--show-only",
            "templates/networkpolicy.yaml",
        ],
        None,
    );
    assert!(ok, "{output}");
    assert!(output.contains("kind: NetworkPolicy"), "{output}");
    let admin_rule = output
        .split("port: 9090")
        .nth(1)
        .expect("a rule for the admin port");
    assert!(
        admin_rule.contains("- hookline-system") && admin_rule.contains("- monitoring"),
        "{output}"
    );
    let (ok, output) = run(
        "helm",
        &[
            "template",
            "t",
            &chart(),
            &kube_version(),
            "--set",
            "networkPolicy.enabled=false",
        ],
        None,
    );
    assert!(
        ok && !output.contains("kind: NetworkPolicy"),
        "it can be turned off: {output}"
    );
}
