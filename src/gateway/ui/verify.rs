//! How receivers verify what Hookline sends, with its header names filled in.

use maud::{Markup, html};

use super::page;

/// Signature verification for the receiving side, with Hookline's header names filled in.
pub(in crate::gateway) async fn verify_examples() -> Markup {
    let examples = [
        (
            "Node.js (npm install standardwebhooks)",
            "import { Webhook } from \"standardwebhooks\";\n\n// raw body (string or Buffer), exactly as received\nconst wh = new Webhook(process.env.HOOKLINE_SIGNING_SECRET); // whsec_...\nconst event = wh.verify(rawBody, {\n  \"webhook-id\": req.headers[\"webhook-id\"],\n  \"webhook-timestamp\": req.headers[\"webhook-timestamp\"],\n  \"webhook-signature\": req.headers[\"webhook-signature\"],\n}); // throws if the signature or timestamp is wrong\n// use req.headers[\"webhook-id\"] to drop duplicates (delivery is at-least-once)",
        ),
        (
            "Python (pip install standardwebhooks)",
            "from standardwebhooks.webhooks import Webhook\n\nwh = Webhook(os.environ[\"HOOKLINE_SIGNING_SECRET\"])  # whsec_...\n# request.get_data() is the raw body; headers must include webhook-id,\n# webhook-timestamp and webhook-signature\nevent = wh.verify(request.get_data(), dict(request.headers))  # raises on failure",
        ),
        (
            "Go (go get github.com/standard-webhooks/standard-webhooks/libraries)",
            "wh, err := standardwebhooks.NewWebhook(os.Getenv(\"HOOKLINE_SIGNING_SECRET\"))\nif err != nil { return err }\nbody, _ := io.ReadAll(r.Body)\n// checks webhook-id, webhook-timestamp and webhook-signature\nif err := wh.Verify(body, r.Header); err != nil {\n    http.Error(w, \"bad signature\", http.StatusUnauthorized)\n    return\n}",
        ),
        (
            "Rust (cargo add standardwebhooks)",
            "let wh = standardwebhooks::Webhook::new(&std::env::var(\"HOOKLINE_SIGNING_SECRET\")?)?;\n// body: the raw bytes; headers: http::HeaderMap with webhook-id,\n// webhook-timestamp and webhook-signature\nwh.verify(&body, &headers)?;",
        ),
    ];
    page(
        "Verifying what Hookline sends",
        html! {
            p { "Every delivery carries " code { "webhook-id" } " (the same on every retry: use it to drop duplicates), "
                code { "webhook-timestamp" } " and " code { "webhook-signature" } " ("
                code { "v1,<base64 HMAC-SHA256 of id.timestamp.body>" } "; during a secret rotation, one " code { "v1" }
                " entry per secret), plus " code { "hookline-source" } " and " code { "hookline-event-type" } ". "
                "The signing secret is the target's " code { "secretRef" } ", or the Secret named in its "
                code { "status.generatedSecretName" } " (key " code { "signing-secret" } ")." }
            @for (language, code) in examples {
                section { h2 { (language) } pre { code { (code) } } }
            }
            p { "Or check a request from the command line: " code { "hookline verify --scheme standard-webhooks -H 'webhook-id: …' …" } }
        },
    )
}
