use super::*;

/// Every `rpc` of every `service` in the .proto files, as `/rebeam.v1.Service/Method`.
fn proto_rpcs() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/rebeam/v1");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("proto dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "found only {files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read proto");
        let mut service = None;
        for line in text.lines().map(str::trim) {
            if line.starts_with("//") {
                continue;
            }
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().expect("rpc name").trim();
                let s = service.as_ref().expect("rpc outside a service");
                out.push(format!("/rebeam.v1.{s}/{method}"));
            } else if line.starts_with('}') {
                // Services hold only rpc lines here; a closing brace ends one.
                if line == "}" {
                    service = None;
                }
            }
        }
    }
    out
}

#[test]
fn every_rpc_in_the_protos_is_in_the_table_and_nothing_else() {
    let rpcs = proto_rpcs();
    assert!(rpcs.len() > 30, "parsed only {rpcs:?}");
    for r in &rpcs {
        assert!(required(r).is_some(), "{r} is not in auth::RPC_TABLE");
    }
    for (p, _) in RPC_TABLE {
        assert!(
            rpcs.iter().any(|r| r == p),
            "{p} is in the table but not in the protos"
        );
    }
    let mut seen = std::collections::HashSet::new();
    assert!(RPC_TABLE.iter().all(|(p, _)| seen.insert(*p)), "duplicates");
}

#[test]
fn membership_and_tokens_are_admin_only_and_member_services_secret_only() {
    for m in [
        "AddController",
        "RemoveController",
        "Snapshot",
        "CreateToken",
        "ListTokens",
        "RevokeToken",
    ] {
        assert_eq!(
            required(&format!("/rebeam.v1.ClusterService/{m}")),
            Some(Need::Role(Role::Admin))
        );
    }
    for (p, need) in RPC_TABLE {
        if p.contains(".RaftPeer/") || p.contains(".NodeService/") {
            assert_eq!(*need, Need::Member, "{p}");
        }
    }
    assert_eq!(required("/rebeam.v1.ClusterService/Nope"), None);
}

#[test]
fn static_tokens_carry_a_role_or_are_admin() {
    let t: StaticToken = "deploy:abc".parse().expect("parse");
    assert_eq!((t.role, t.token.as_str()), (Role::Deploy, "abc"));
    let t: StaticToken = "abc".parse().expect("parse");
    assert_eq!((t.role, t.token.as_str()), (Role::Admin, "abc"));
    let t: StaticToken = "x:y".parse().expect("parse");
    assert_eq!((t.role, t.token.as_str()), (Role::Admin, "x:y"));
    assert!("read:".parse::<StaticToken>().is_err());
}

#[test]
fn issued_tokens_authenticate_by_hash_until_expired_or_revoked() {
    let cache = Arc::new(TokenCache::default());
    let made = new_token(Role::Call, 1_000, 500, "ci".into());
    assert!(!made.record.sha256.contains(&made.text));
    cache.set(made.record.clone());
    let creds = Credentials::new(
        "sekret".into(),
        vec!["read:r0".parse().expect("parse")],
        Some(cache.clone() as Arc<dyn TokenSource>),
    );
    assert_eq!(creds.authenticate("sekret", 0), Some(Principal::Member));
    assert_eq!(
        creds.authenticate("r0", 0),
        Some(Principal::Client {
            role: Role::Read,
            token: "static".into()
        })
    );
    assert_eq!(
        creds.authenticate(&made.text, 1_200),
        Some(Principal::Client {
            role: Role::Call,
            token: made.record.id.clone()
        })
    );
    assert_eq!(creds.authenticate(&made.text, 1_500), None, "expired");
    let forged = format!("{TOKEN_PREFIX}{}_{}", made.record.id, "00".repeat(32));
    assert_eq!(creds.authenticate(&forged, 1_200), None);
    assert_eq!(creds.authenticate("", 0), None);
    cache.remove(&made.record.id);
    assert_eq!(creds.authenticate(&made.text, 1_200), None, "revoked");
}

#[test]
fn roles_are_ordered_and_checked_against_the_table() {
    let creds = Credentials::new(
        "s".into(),
        vec![
            "read:r".parse().expect("parse"),
            "deploy:d".parse().expect("parse"),
        ],
        None,
    );
    let mut h = http::HeaderMap::new();
    h.insert("authorization", "Bearer r".parse().expect("header"));
    let deliver = "/rebeam.v1.GatewayService/Deliver";
    assert_eq!(
        creds
            .authorize(deliver, &h, &[], None)
            .expect_err("read cannot call")
            .code(),
        tonic::Code::PermissionDenied
    );
    h.insert("authorization", "Bearer d".parse().expect("header"));
    assert!(creds.authorize(deliver, &h, &[], None).is_ok());
    assert_eq!(
        creds
            .authorize("/rebeam.v1.RaftPeer/Vote", &h, &[], None)
            .expect_err("clients cannot vote")
            .code(),
        tonic::Code::PermissionDenied
    );
    h.insert("authorization", "Bearer s".parse().expect("header"));
    assert!(creds
        .authorize("/rebeam.v1.RaftPeer/Vote", &h, &[], None)
        .is_ok());
    assert_eq!(
        creds
            .authorize("/rebeam.v1.RaftPeer/Nope", &h, &[], None)
            .expect_err("unlisted")
            .code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        creds
            .authorize(deliver, &http::HeaderMap::new(), &[], None)
            .expect_err("no credential")
            .code(),
        tonic::Code::Unauthenticated
    );
}

#[test]
fn with_mtls_members_prove_themselves_by_certificate_only() {
    let creds = Credentials::new("s".into(), vec![], None).with_mtls(true);
    let vote = "/rebeam.v1.RaftPeer/Vote";
    let mut h = http::HeaderMap::new();
    h.insert("authorization", "Bearer s".parse().expect("header"));
    assert_eq!(
        creds
            .authorize(vote, &h, &[], None)
            .expect_err("the secret alone is no member credential under mTLS")
            .code(),
        tonic::Code::Unauthenticated
    );
    let controller = [Member::Controller(2)];
    let node_a = [Member::Node("a".into())];
    let empty = http::HeaderMap::new();
    assert_eq!(
        creds
            .authorize(vote, &empty, &controller, None)
            .expect("a member by certificate"),
        Principal::Member
    );
    assert_eq!(
        creds
            .authorize(vote, &empty, &node_a, None)
            .expect_err("a node certificate cannot vote")
            .code(),
        tonic::Code::PermissionDenied
    );
}

#[test]
fn a_node_certificate_calls_only_what_nodes_use() {
    let creds = Credentials::new("s".into(), vec![], None).with_mtls(true);
    let node = [Member::Node("a".into())];
    let empty = http::HeaderMap::new();
    for path in NODE_RPCS {
        assert!(required(path).is_some(), "{path} is not in RPC_TABLE");
        assert_eq!(
            creds.authorize(path, &empty, &node, None).expect(path),
            Principal::Node("a".into()),
            "{path}"
        );
    }
    for (path, _) in RPC_TABLE.iter().filter(|(p, _)| !NODE_RPCS.contains(p)) {
        assert_eq!(
            creds
                .authorize(path, &empty, &node, None)
                .expect_err(path)
                .code(),
            tonic::Code::PermissionDenied,
            "{path}"
        );
    }
}

#[test]
fn the_node_secret_calls_only_what_nodes_use_and_the_cluster_secret_still_everything() {
    let creds = Credentials::new("cluster".into(), vec![], None).with_node_secret("node".into());
    let bearer = |t: &str| {
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
        h
    };
    let node = bearer("node");
    for path in NODE_RPCS {
        assert_eq!(
            creds.authorize(path, &node, &[], None).expect(path),
            Principal::Node(String::new()),
            "{path}"
        );
    }
    for (path, _) in RPC_TABLE.iter().filter(|(p, _)| !NODE_RPCS.contains(p)) {
        let refused = creds.authorize(path, &node, &[], None).expect_err(path);
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{path}");
        assert!(
            refused.message().contains("not for nodes"),
            "{path}: {refused:?}"
        );
        assert_eq!(
            creds
                .authorize(path, &bearer("cluster"), &[], None)
                .expect(path),
            Principal::Member,
            "{path}"
        );
    }
    assert_eq!(creds.authenticate("nod", 0), None);
    // Without a node secret nothing empty or absent passes for one.
    let plain = Credentials::new("cluster".into(), vec![], None);
    assert_eq!(plain.authenticate("node", 0), None);
    assert_eq!(plain.authenticate("", 0), None);
}

#[test]
fn a_token_known_by_its_digest_authenticates_with_its_role() {
    let digest: TokenDigest = format!("call:{}", token_hash("t0k3n").to_uppercase())
        .parse()
        .expect("parse");
    assert_eq!(digest.role, Role::Call);
    let bare: TokenDigest = token_hash("x").parse().expect("parse");
    assert_eq!(bare.role, Role::Admin);
    assert!("call:abc".parse::<TokenDigest>().is_err());
    assert!(format!("root:{}", token_hash("x"))
        .parse::<TokenDigest>()
        .is_err());
    let creds = Credentials::new(String::new(), vec![], None).with_token_digests(vec![digest]);
    assert_eq!(
        creds.authenticate("t0k3n", 0),
        Some(Principal::Client {
            role: Role::Call,
            token: "static".into()
        })
    );
    assert_eq!(creds.authenticate("t0k3m", 0), None);
    // The digest itself is no credential.
    assert_eq!(creds.authenticate(&token_hash("t0k3n"), 0), None);
}

#[test]
fn a_token_over_its_rate_is_refused_and_another_is_not() {
    let creds = Credentials::new(
        "s".into(),
        vec![
            "read:one".parse().expect("token"),
            "read:two".parse().expect("token"),
        ],
        None,
    )
    .with_rate_limit(rate::RateLimit {
        per_second: 0.001,
        burst: 2.0,
    });
    let status = "/rebeam.v1.ClusterService/Status";
    let bearer = |t: &str| {
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
        h
    };
    let ip = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    for _ in 0..2 {
        assert!(creds.authorize(status, &bearer("one"), &[], ip).is_ok());
    }
    let refused = creds
        .authorize(status, &bearer("one"), &[], ip)
        .expect_err("over the rate");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("rate limit"),
        "{}",
        refused.message()
    );
    assert!(refused.metadata().get(rate::RETRY_AFTER_KEY).is_some());
    assert!(
        creds.authorize(status, &bearer("two"), &[], ip).is_ok(),
        "the other static token has its own bucket"
    );
    assert!(
        creds.authorize(status, &bearer("s"), &[], ip).is_ok(),
        "members are not limited"
    );
    // Failed attempts from one address: two are counted, the third is refused unhashed.
    for _ in 0..2 {
        assert_eq!(
            creds
                .authorize(status, &bearer("wrong"), &[], ip)
                .expect_err("wrong")
                .code(),
            tonic::Code::Unauthenticated
        );
    }
    assert_eq!(
        creds
            .authorize(status, &bearer("wrong"), &[], ip)
            .expect_err("limited")
            .code(),
        tonic::Code::ResourceExhausted
    );
}

#[test]
fn a_token_holds_at_most_its_streams_members_none_and_a_dropped_slot_frees_one() {
    let creds = Credentials::new(
        "s".into(),
        vec![
            "read:one".parse().expect("token"),
            "read:two".parse().expect("token"),
        ],
        None,
    )
    .with_node_secret("n".into())
    .with_stream_limit(2);
    let logs = "/rebeam.v1.GatewayService/Logs";
    let bearer = |t: &str| {
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
        h
    };
    let first = creds.admit(logs, &bearer("one"), &[], None).expect("1");
    let _second = creds.admit(logs, &bearer("one"), &[], None).expect("2");
    let refused = creds
        .admit(logs, &bearer("one"), &[], None)
        .expect_err("over the cap");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("--max-streams-per-token"),
        "{}",
        refused.message()
    );
    assert!(
        creds.authorize(logs, &bearer("one"), &[], None).is_ok(),
        "authorizing alone takes no slot"
    );
    assert!(
        creds.admit(logs, &bearer("two"), &[], None).is_ok(),
        "another token has its own count"
    );
    let held: Vec<_> = (0..10)
        .map(|_| {
            creds
                .admit(logs, &bearer("s"), &[], None)
                .expect("members are not capped")
        })
        .collect();
    assert!(held.iter().all(|a| a.slot.is_none()));
    let watch = "/rebeam.v1.NodeService/Watch";
    assert!((0..10).all(|_| creds.admit(watch, &bearer("n"), &[], None).is_ok()));
    drop(first);
    assert!(
        creds.admit(logs, &bearer("one"), &[], None).is_ok(),
        "the slot freed by the first is taken"
    );
}
