//! The watcher contract on the single-node backend, with the runtime's clock paused so
//! windows close exactly when a test says.

use std::time::Duration;

use super::*;

fn presence(window_ms: u64, list_limit: usize) -> Arc<Presence> {
    let config = PresenceConfig {
        window: Duration::from_millis(window_ms),
        list_limit,
        ..PresenceConfig::default()
    };
    Presence::local(config).0
}

async fn join(p: &Arc<Presence>, user: &str) -> (Watch, Snapshot) {
    let id = Identity::new(user, None, p.config()).unwrap();
    p.join("room", id).await.unwrap()
}

fn members(s: &Snapshot) -> Vec<String> {
    let mut m: Vec<String> = s
        .members
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.user.to_string())
        .collect();
    m.sort();
    m
}

/// (joins, leaves, count) of a diff; panics on a sync.
fn told(update: Update) -> (Vec<String>, Vec<String>, u64) {
    let Update::Diff(d) = update else {
        panic!("expected a diff, got a sync")
    };
    let side = |joined: bool| {
        d.entries
            .iter()
            .filter(|e| e.joined == joined)
            .map(|e| e.user.to_string())
            .collect()
    };
    (side(true), side(false), d.count)
}

async fn next(w: &mut Watch) -> Update {
    tokio::time::timeout(Duration::from_secs(60), w.next())
        .await
        .expect("an update")
        .expect("the watch goes on")
}

/// Nothing is pending for `w` (a window later).
async fn quiet(w: &mut Watch) {
    let got = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
    assert!(got.is_err(), "expected nothing");
}

#[tokio::test(start_paused = true)]
async fn a_watcher_joining_mid_window_hears_each_change_once() {
    let p = presence(1000, 100);
    let (mut a, _) = join(&p, "a").await;
    let (_b, _) = join(&p, "b").await;
    // c's snapshot already holds b (and c); the window's diff holds both joins.
    let (mut c, snap) = join(&p, "c").await;
    assert_eq!(members(&snap), ["a", "b", "c"]);
    assert_eq!(
        told(next(&mut a).await),
        (vec!["b".into(), "c".into()], vec![], 3)
    );
    // For c the whole window is in its snapshot: nothing, until d.
    let (_d, _) = join(&p, "d").await;
    assert_eq!(told(next(&mut c).await), (vec!["d".into()], vec![], 4));
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_inside_a_window_gets_only_the_newer_part() {
    let p = presence(1000, 100);
    let (mut a, _) = join(&p, "a").await;
    let (_b, _) = join(&p, "b").await;
    let (mut c, _) = join(&p, "c").await;
    let (_d, _) = join(&p, "d").await;
    assert_eq!(told(next(&mut a).await).0, ["b", "c", "d"]);
    assert_eq!(told(next(&mut c).await), (vec!["d".into()], vec![], 4));
}

#[tokio::test(start_paused = true)]
async fn one_user_in_two_places_is_one_member_and_a_blip_is_never_told() {
    let p = presence(1000, 100);
    let (mut a, _) = join(&p, "a").await;
    let (tab1, _) = join(&p, "u").await;
    let (tab2, snap) = join(&p, "u").await;
    assert_eq!(snap.count, 2);
    assert_eq!(
        snap.members
            .unwrap()
            .iter()
            .find(|m| &*m.user == "u")
            .unwrap()
            .connections,
        2
    );
    assert_eq!(told(next(&mut a).await), (vec!["u".into()], vec![], 2));
    drop(tab1);
    quiet(&mut a).await;
    drop(tab2);
    assert_eq!(told(next(&mut a).await), (vec![], vec!["u".into()], 1));
    // In and out within one window: nothing at all.
    let (blip, _) = join(&p, "blip").await;
    drop(blip);
    quiet(&mut a).await;
}

#[tokio::test(start_paused = true)]
async fn above_the_limit_only_the_count_is_told() {
    let p = presence(10, 2);
    let (mut a, _) = join(&p, "a").await;
    let (_b, _) = join(&p, "b").await;
    assert_eq!(told(next(&mut a).await).0, ["b"]);
    let (_c, snap) = join(&p, "c").await;
    assert!(snap.members.is_none());
    let Update::Diff(d) = next(&mut a).await else {
        panic!("a diff")
    };
    assert!(d.counts_only && d.entries.is_empty());
    assert_eq!(d.body(), json!({"channel": "room", "count": 3}));
}

#[tokio::test(start_paused = true)]
async fn a_watcher_that_falls_behind_gets_the_whole_state() {
    let p = presence(1, 1000);
    let (mut a, _) = join(&p, "a").await;
    let mut held = Vec::new();
    for i in 0..(notify::BACKLOG + 8) {
        held.push(join(&p, &format!("m{i}")).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let Update::Sync(s) = next(&mut a).await else {
        panic!("a lagging watcher is resynced")
    };
    assert_eq!(s.count as usize, notify::BACKLOG + 9);
}

#[test]
fn identities_are_bounded() {
    let c = PresenceConfig::default();
    assert!(Identity::new("", None, &c).is_err());
    assert!(Identity::new("a\nb", None, &c).is_err());
    assert!(Identity::new(&"x".repeat(MAX_USER_BYTES + 1), None, &c).is_err());
    let big = Arc::new(json!({"x": "y".repeat(c.max_info_bytes)}));
    assert!(matches!(
        Identity::new("u", Some(big), &c),
        Err(PresenceError::InvalidInfo(_))
    ));
    assert!(Identity::new("u", Some(Arc::new(json!([1]))), &c).is_err());
    assert!(Identity::new("u", Some(Arc::new(json!({"n": 1}))), &c).is_ok());
}

/// What an idle watcher costs while it waits: its future is stored per connection.
#[test]
fn a_waiting_watcher_is_small() {
    let p = presence(100, 100);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut w, _) = rt.block_on(join(&p, "a"));
    let size = std::mem::size_of_val(&w.next());
    assert!(size <= 256, "Watch::next's future is {size} bytes");
}
