//! Trimming acknowledged entries, seen through the trim metrics.

use crate::common::{self, TestDb};
use crate::serve::{http_get, sample};
use crate::{ITEMS, items_mapping};

/// The trim script compares and increments IDs as decimal strings: a last-delivered ID
/// with the largest sequence number is followed by the next millisecond.
#[tokio::test]
async fn trimming_handles_the_largest_sequence_number() {
    let stream = format!("{}:edge", common::unique("s"));
    let mut r = common::redis().await;
    for id in ["5-0", "5-18446744073709551615", "6-0"] {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg(id)
            .arg("f")
            .arg("v")
            .query_async(&mut r)
            .await
            .expect("XADD");
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("5-18446744073709551615")
        .query_async(&mut r)
        .await
        .expect("XGROUP CREATE");
    let db = TestDb::new().await;
    let config = common::config(&db, "c1", &items_mapping("unused"));
    let mut control = redsink::redis::connect_control(&config.redis)
        .await
        .expect("connect");
    let trimmed = redsink::redis::admin::trim_acked(&mut control, &stream)
        .await
        .expect("trim");
    assert_eq!(trimmed, 2);
    let left: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .expect("XRANGE");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, "6-0");
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut r)
        .await
        .expect("DEL");
}

#[tokio::test]
async fn trimming_keeps_what_any_group_still_needs_and_counts_what_a_ceiling_drops() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    crate::add_items(&stream, 10).await;
    // Another group on the stream: it read two entries and acknowledged only the first.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("slow")
        .arg("0")
        .query_async(&mut r)
        .await
        .expect("XGROUP CREATE");
    type Entries = Vec<(String, Vec<(String, String)>)>;
    let read: Vec<(String, Entries)> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("slow")
        .arg("s1")
        .arg("COUNT")
        .arg(2)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut r)
        .await
        .expect("XREADGROUP");
    let first = read[0].1[0].0.clone();
    let _: i64 = redis::cmd("XACK")
        .arg(&stream)
        .arg("slow")
        .arg(&first)
        .query_async(&mut r)
        .await
        .expect("XACK");

    let address = format!("127.0.0.1:{}", common::free_port());
    let extra = format!(
        "[http]\naddress = \"{address}\"\n{}trim = \"acked\"\ntrim_max_len = 5\n",
        items_mapping(&prefix)
    );
    let running = common::Running::start(common::config(&db, "c1", &extra));
    let trimmed = format!("redsink_entries_trimmed_total{{stream=\"{stream}\"}}");
    let dropped = format!("redsink_trim_dropped_unacked_total{{stream=\"{stream}\"}}");
    let started = std::time::Instant::now();
    let scrape = loop {
        if tokio::net::TcpStream::connect(&address).await.is_ok() {
            let scrape = http_get(&address, "/metrics").await.1;
            if sample(&scrape, &dropped).is_some() {
                break scrape;
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(40),
            "no trim"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // redsink had applied and acknowledged all ten; "slow" still needs the second entry
    // on: only the first went as acknowledged, then the ceiling of 5 dropped 4 more.
    assert_eq!(sample(&scrape, &trimmed), Some(1.0), "{scrape}");
    assert_eq!(sample(&scrape, &dropped), Some(4.0), "{scrape}");
    assert_eq!(common::xlen(&mut r, &stream).await, 5);
    assert_eq!(
        crate::items(&db).await.len(),
        10,
        "the replica has every row"
    );
    running.stop().await.expect("stop");
    common::cleanup_streams(&prefix).await;
}
