//! The publisher's unit tests, one against the machine's Redis.

use super::*;

#[test]
fn publisher_retries_are_capped_by_redis_retry_max_not_backoff_max() {
    let backoff = BackoffConfig::default();
    assert_eq!(backoff.max, Duration::from_secs(300));
    let s = retry_schedule(&backoff, None);
    assert_eq!(
        (s.initial, s.max),
        (backoff.initial, DEFAULT_PUBLISH_RETRY_MAX)
    );
    let redis = RedisConfig {
        url: "redis://127.0.0.1".into(),
        channel: "c".into(),
        changes_channel: "c2".into(),
        stream: None,
        stream_maxlen: 1,
        retry_max: Duration::from_millis(200),
    };
    let s = retry_schedule(&backoff, Some(&redis));
    assert_eq!(s.max, Duration::from_millis(200));
    assert_eq!(
        s.initial,
        Duration::from_millis(200),
        "initial never above the cap"
    );
}

/// Against the machine's Redis (IDLESYNC_TEST_REDIS overrides it), with names no other
/// test uses. One subscriber connection on both channels sees what went where, and in
/// which order: a Sync record reaches only `channel`, a Changes record only
/// `changes_channel`, interleaved as published; the stream gets all four.
#[tokio::test]
async fn each_topic_reaches_only_its_channel_in_order_and_the_stream_gets_both() {
    use futures::StreamExt;
    let url =
        std::env::var("IDLESYNC_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let base = format!(
        "idlesync-unit:publish-topics:{}:{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    let cfg = RedisConfig {
        url,
        channel: format!("{base}:sync"),
        changes_channel: format!("{base}:changes"),
        stream: Some(format!("{base}:stream")),
        stream_maxlen: 100,
        retry_max: Duration::from_secs(1),
    };
    let client = redis::Client::open(cfg.url.as_str()).unwrap();
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .expect("redis at 127.0.0.1:6379");
    pubsub.subscribe(&cfg.channel).await.unwrap();
    pubsub.subscribe(&cfg.changes_channel).await.unwrap();

    let mut sink = Sink::from_config(Some(&cfg)).unwrap();
    let sent = [
        (Topic::Sync, "s1"),
        (Topic::Changes, "c1"),
        (Topic::Changes, "c2"),
        (Topic::Sync, "s2"),
    ];
    for (topic, payload) in sent {
        sink.publish(topic, payload).await.unwrap();
    }

    let mut messages = pubsub.into_on_message();
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        let m = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a record within 5 s")
            .expect("subscription open");
        got.push((
            m.get_channel_name().to_string(),
            m.get_payload::<String>().unwrap(),
        ));
    }
    let channel_of = |t: Topic| match t {
        Topic::Sync => cfg.channel.clone(),
        Topic::Changes => cfg.changes_channel.clone(),
    };
    let want: Vec<(String, String)> = sent
        .iter()
        .map(|(t, p)| (channel_of(*t), p.to_string()))
        .collect();
    assert_eq!(got, want);

    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let stream = cfg.stream.clone().unwrap();
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut c)
        .await
        .unwrap();
    let payloads: Vec<&str> = entries
        .iter()
        .map(|(_, fields)| fields.get(1).map_or("", String::as_str))
        .collect();
    assert_eq!(payloads, ["s1", "c1", "c2", "s2"]);
}

#[test]
fn remembered_ids_are_bounded_oldest_first() {
    let mut r = Remembered::default();
    let ids: Vec<i64> = (0..(REMEMBER as i64 + 10)).collect();
    r.extend(&ids);
    assert!(!r.contains(0) && !r.contains(9));
    assert!(r.contains(10) && r.contains(REMEMBER as i64 + 9));
    assert_eq!(r.set.len(), REMEMBER);
    r.extend(&[10]);
    assert_eq!(r.order.len(), REMEMBER);
}
