use super::*;

#[test]
fn bare_and_json_tokens() {
    let now = Instant::now();
    let t = parse_token_output("  ya29.abc\n", now).unwrap();
    assert_eq!(t.token.expose(), "ya29.abc");
    assert!(t.refresh_at.is_none());
    let t = parse_token_output(r#"{"access_token":"tok","expires_in":3600}"#, now).unwrap();
    assert_eq!(t.token.expose(), "tok");
    assert_eq!(t.refresh_at, Some(now + Duration::from_secs(3540)));
    assert!(!t.is_due(now + Duration::from_secs(3539)));
    assert!(t.is_due(now + Duration::from_secs(3540)));
    // A short life refreshes at half of it.
    let t = parse_token_output(r#"{"access_token":"tok","expires_in":10}"#, now).unwrap();
    assert_eq!(t.refresh_at, Some(now + Duration::from_secs(5)));
}

#[test]
fn bad_token_output_never_quotes_it() {
    for out in ["", "two words", r#"{"token":"s3cr3t"}"#, "{s3cr3t"] {
        let e = parse_token_output(out, Instant::now()).unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert!(matches!(e, SecretError::Output { .. }), "{e:?}");
    }
}

#[tokio::test]
async fn commands_run_trim_fail_and_time_out() {
    let s = SecretSource::Command("printf '  pw with space \\n'".into());
    assert_eq!(s.resolve().await.unwrap().expose(), "pw with space");
    let s = SecretSource::Command("echo hunter2; exit 3".into());
    let e = s.resolve().await.unwrap_err();
    assert!(matches!(e, SecretError::Failed { .. }), "{e:?}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(!format!("{s:?}").contains("hunter2"));
    let s = SecretSource::Command("true".into());
    assert!(matches!(s.resolve().await, Err(SecretError::Output { .. })));
}

#[tokio::test]
async fn token_is_cached_until_invalidated() {
    let dir = tempfile::tempdir().unwrap();
    let n = dir.path().join("n");
    let cmd = format!(
        "n=$(cat {0} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {0}; echo tok-$n",
        n.display()
    );
    let src = OAuth2Token::new(cmd);
    let (a, fa) = src.get().await.unwrap();
    let (b, fb) = src.get().await.unwrap();
    assert_eq!((a.expose(), fa), ("tok-1", Freshness::Fresh));
    assert_eq!((b.expose(), fb), ("tok-1", Freshness::Cached));
    src.invalidate(&Secret("other".into())).await;
    assert_eq!(src.get().await.unwrap().1, Freshness::Cached);
    src.invalidate(&a).await;
    assert_eq!(src.get().await.unwrap().0.expose(), "tok-2");
}

#[test]
fn check_finds_missing_programs() {
    assert!(SecretSource::Command("sh -c 'echo x'".into())
        .check()
        .is_ok());
    assert!(SecretSource::Command("$(whatever)".into()).check().is_ok());
    assert!(matches!(
        SecretSource::Command("/nonexistent/bin/pw".into()).check(),
        Err(SecretError::NotFound { .. })
    ));
    assert!(matches!(
        SecretSource::Command("no-such-program-idlesync arg".into()).check(),
        Err(SecretError::NotFound { .. })
    ));
}
