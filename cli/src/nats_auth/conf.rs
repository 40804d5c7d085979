//! The nats-server configuration include (`auth.conf`): one NKey user per role with its
//! publish and subscribe allow lists. Everything a list does not allow is refused.

use super::roles::Role;

/// The `authorization { users = [...] }` block for `users` (each role with its public
/// NKey, `U...`), with a header saying where it comes from.
pub fn render(users: &[(Role, String)], prefix: &str) -> String {
    let mut conf = format!(
        "# NATS users of the qwen3-embed deployment under subject prefix `{prefix}`, one NKey\n\
         # per role. Written by `nats-auth`: run it again (with --rotate ROLE to replace a\n\
         # role's key) rather than editing this file, then reload nats-server (SIGHUP).\n\
         authorization {{\n  users = [\n"
    );
    for (role, public_key) in users {
        conf.push_str(&format!(
            "    # {name}\n    {{\n      nkey: \"{public_key}\"\n      permissions: {{\n        \
             publish: {{ allow: [{publish}] }}\n        subscribe: {{ allow: [{subscribe}] }}\n      \
             }}\n    }}\n",
            name = role.name,
            publish = quoted(&role.publish),
            subscribe = quoted(&role.subscribe),
        ));
    }
    conf.push_str("  ]\n}\n");
    conf
}

/// `"a", "b"`: the subjects as a configuration list's items (subjects hold no quotes).
fn quoted(subjects: &[String]) -> String {
    subjects
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_its_key_and_allow_lists() {
        let role = Role {
            name: "alice".into(),
            publish: vec!["embed.requests.from.alice".into()],
            subscribe: vec!["_INBOX.alice.>".into(), "$SRV.*".into()],
        };
        let conf = render(&[(role, "UKEY".into())], "embed");
        assert!(
            conf.contains("    # alice\n    {\n      nkey: \"UKEY\"\n"),
            "{conf}"
        );
        assert!(
            conf.contains("publish: { allow: [\"embed.requests.from.alice\"] }"),
            "{conf}"
        );
        assert!(
            conf.contains("subscribe: { allow: [\"_INBOX.alice.>\", \"$SRV.*\"] }"),
            "{conf}"
        );
        assert!(conf.trim_end().ends_with("]\n}"), "{conf}");
    }
}
