use std::os::unix::fs::PermissionsExt;

use spore_core::identity::Keypair;
use spore_core::pow::Stamp;

use super::*;

const NOW: u64 = 1_700_000_000;

fn at(secs: u64) -> Instant {
    Instant::from_micros(secs * 1_000_000)
}

fn key(seed: u8) -> Keypair {
    Keypair::from_secret_bytes([seed; 32])
}

fn value(publisher: u8, name: &str, seq: u64, expires: u64) -> ValueRecord {
    ValueRecord::new(
        &key(publisher),
        name,
        name.as_bytes().to_vec(),
        seq,
        expires,
    )
}

fn provider(who: u8, content: u8, expires: u64) -> ProviderRecord {
    ProviderRecord::new(
        &key(who),
        Stamp { nonce: 0 },
        [content; 32],
        vec![],
        expires,
    )
}

fn peer(who: u8, seq: u64, expires: u64) -> PeerRecord {
    let addr = std::net::SocketAddr::from(([192, 0, 2, who], 4433));
    PeerRecord::new(
        &key(who),
        Stamp { nonce: 0 },
        vec![addr],
        vec![],
        seq,
        expires,
    )
}

fn open(path: &Path, now: u64) -> RedbStore {
    RedbStore::open(path, StoreLimits::default(), at(now)).unwrap()
}

fn table_len(store: &RedbStore, table: BytesTable) -> u64 {
    let txn = store.db.begin_read().unwrap();
    txn.open_table(table).unwrap().len().unwrap()
}

#[test]
fn records_survive_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(RECORDS_FILE);
    let now = at(NOW);
    let (v, pr, pe) = (
        value(1, "a", 1, NOW + 100),
        provider(2, 9, NOW + 100),
        peer(3, 1, NOW + 100),
    );
    {
        let mut s = open(&path, NOW);
        s.put_value(v.clone(), now).unwrap();
        s.put_provider(pr.clone(), now).unwrap();
        s.put_peer(pe.clone(), now).unwrap();
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut s = open(&path, NOW + 1);
    assert_eq!(s.dropped_at_open(), 0);
    let now = at(NOW + 1);
    assert_eq!(s.get_value(&v.key(), now), Some(v.clone()));
    assert_eq!(s.providers(&pr.key(), now), vec![pr.clone()]);
    assert_eq!(s.get_peer(pe.peer(), now), Some(pe));
    assert_eq!(
        s.len(),
        StoreCounts {
            values: 1,
            provider_keys: 1,
            providers: 1,
            peers: 1
        }
    );
    // The rules hold after a reopen as before it.
    assert!(matches!(
        s.put_value(value(1, "a", 1, NOW + 100), now),
        Err(StoreError::Stale { .. })
    ));
    // A newer version replaces the old one on disk too.
    let v2 = value(1, "a", 2, NOW + 100);
    s.put_value(v2.clone(), now).unwrap();
    s.sync().unwrap();
    drop(s);
    let s = open(&path, NOW + 1);
    assert_eq!(s.get_value(&v.key(), at(NOW + 1)), Some(v2));
    assert_eq!(table_len(&s, VALUES), 1);
}

#[test]
fn expired_records_are_dropped_on_reopen_and_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(RECORDS_FILE);
    {
        let mut s = open(&path, NOW);
        s.put_value(value(1, "short", 1, NOW + 10), at(NOW))
            .unwrap();
        s.put_value(value(1, "long", 1, NOW + 100), at(NOW))
            .unwrap();
        s.put_provider(provider(2, 9, NOW + 10), at(NOW)).unwrap();
        s.put_peer(peer(3, 1, NOW + 10), at(NOW)).unwrap();
    }
    let s = open(&path, NOW + 10);
    assert_eq!(s.dropped_at_open(), 3);
    assert_eq!(
        s.len(),
        StoreCounts {
            values: 1,
            ..StoreCounts::default()
        }
    );
    drop(s);
    // Gone from the file: even opened "earlier" they do not come back.
    let s = open(&path, NOW);
    assert_eq!(s.dropped_at_open(), 0);
    assert_eq!(s.len().values, 1);
    assert_eq!(table_len(&s, PROVIDERS), 0);
    assert_eq!(table_len(&s, PEERS), 0);
}

#[test]
fn expire_and_evictions_are_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(RECORDS_FILE);
    let limits = StoreLimits {
        max_providers_per_key: 1,
        ..StoreLimits::default()
    };
    {
        let mut s = RedbStore::open(&path, limits, at(NOW)).unwrap();
        s.put_value(value(1, "a", 1, NOW + 10), at(NOW)).unwrap();
        s.put_provider(provider(1, 9, NOW + 10), at(NOW)).unwrap();
        // Displaces provider 1, which expires sooner.
        s.put_provider(provider(2, 9, NOW + 50), at(NOW)).unwrap();
        assert_eq!(s.expire(at(NOW + 10)), 1);
        assert_eq!(table_len(&s, VALUES), 0);
        assert_eq!(table_len(&s, PROVIDERS), 1);
    }
    let s = RedbStore::open(&path, limits, at(NOW)).unwrap();
    assert_eq!(s.dropped_at_open(), 0);
    let who: Vec<_> = s
        .providers(&Key([9; 32]), at(NOW))
        .iter()
        .map(|r| *r.provider())
        .collect();
    assert_eq!(who, vec![key(2).peer_id()]);
    assert!(s.get_value(&value(1, "a", 0, 0).key(), at(NOW)).is_none());
}

#[test]
fn limits_are_enforced_when_writing_and_on_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(RECORDS_FILE);
    {
        let mut s = RedbStore::open(
            &path,
            StoreLimits {
                max_values_per_publisher: 4,
                ..StoreLimits::default()
            },
            at(NOW),
        )
        .unwrap();
        for name in ["a", "b", "c", "d"] {
            s.put_value(value(1, name, 1, NOW + 100), at(NOW)).unwrap();
        }
        assert!(matches!(
            s.put_value(value(1, "e", 1, NOW + 100), at(NOW)),
            Err(StoreError::QuotaExceeded { .. })
        ));
        assert_eq!(table_len(&s, VALUES), 4);
        for p in 2..=4 {
            s.put_peer(peer(p, 1, NOW + 100), at(NOW)).unwrap();
        }
    }
    // Reopened with smaller limits: the surplus is dropped, from the file too.
    let smaller = StoreLimits {
        max_values_per_publisher: 2,
        max_peer_records: 1,
        ..StoreLimits::default()
    };
    let s = RedbStore::open(&path, smaller, at(NOW)).unwrap();
    assert_eq!(s.dropped_at_open(), 4);
    assert_eq!(s.len().values, 2);
    assert_eq!(s.len().peers, 1);
    assert_eq!(table_len(&s, VALUES), 2);
    assert_eq!(table_len(&s, PEERS), 1);
    assert_eq!(s.limits(), &smaller);
}

#[test]
fn undecodable_entries_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(RECORDS_FILE);
    let good = value(1, "a", 1, NOW + 100);
    {
        let mut s = open(&path, NOW);
        s.put_value(good.clone(), at(NOW)).unwrap();
        let txn = s.db.begin_write().unwrap();
        {
            let mut values = txn.open_table(VALUES).unwrap();
            values.insert(&[0u8; 32][..], &b"garbage"[..]).unwrap();
            // A valid record under the wrong key.
            let bytes = postcard::to_allocvec(&value(2, "b", 1, NOW + 100)).unwrap();
            values.insert(&[1u8; 32][..], &bytes[..]).unwrap();
            let mut peers = txn.open_table(PEERS).unwrap();
            peers.insert(&[5u8; 3][..], &b""[..]).unwrap();
        }
        txn.commit().unwrap();
    }
    let s = open(&path, NOW);
    assert_eq!(s.dropped_at_open(), 3);
    assert_eq!(s.values(), vec![good]);
    assert_eq!(table_len(&s, VALUES), 1);
    assert_eq!(table_len(&s, PEERS), 0);
}

#[test]
fn a_database_is_open_once() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(RECORDS_FILE);
    let s = open(&path, NOW);
    let err = RedbStore::open(&path, StoreLimits::default(), at(NOW)).unwrap_err();
    assert!(matches!(err, RecordsError::Open { .. }), "{err}");
    let book = s.peer_book();
    drop(s);
    // The book still holds the database.
    assert!(RedbStore::open(&path, StoreLimits::default(), at(NOW)).is_err());
    drop(book);
    open(&path, NOW);
}

#[test]
fn a_bad_file_is_an_open_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(RECORDS_FILE);
    std::fs::write(&path, b"this is not a redb database, not at all").unwrap();
    let err = RedbStore::open(&path, StoreLimits::default(), at(NOW)).unwrap_err();
    assert!(err.to_string().contains(RECORDS_FILE), "{err}");
}

fn ids(records: &[PeerRecord]) -> Vec<u8> {
    records
        .iter()
        .map(|r| (1..=20).find(|&i| key(i).peer_id() == *r.peer()).unwrap())
        .collect()
}

#[test]
fn peer_book_orders_by_last_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(RECORDS_FILE);
    let s = open(&path, NOW);
    let book = s.peer_book();
    assert!(book.is_empty().unwrap());
    assert_eq!(book.capacity(), DEFAULT_PEER_BOOK_CAPACITY);
    for (i, p) in [3u8, 1, 2].into_iter().enumerate() {
        book.remember(peer(p, 1, NOW + 100), at(NOW + i as u64))
            .unwrap();
    }
    assert_eq!(ids(&book.recent(10).unwrap()), vec![2, 1, 3]);
    assert_eq!(ids(&book.recent(2).unwrap()), vec![2, 1]);
    assert_eq!(book.recent(0).unwrap(), vec![]);
    // Seeing 3 again moves it to the front, without duplicating it.
    book.remember(peer(3, 1, NOW + 100), at(NOW + 5)).unwrap();
    assert_eq!(ids(&book.recent(10).unwrap()), vec![3, 2, 1]);
    assert_eq!(book.len().unwrap(), 3);
    // An older record does not replace a newer one, but still counts as a sighting.
    book.remember(peer(1, 7, NOW + 100), at(NOW + 6)).unwrap();
    book.remember(peer(1, 6, NOW + 100), at(NOW + 7)).unwrap();
    let recent = book.recent(1).unwrap();
    assert_eq!(ids(&recent), vec![1]);
    assert_eq!(recent[0].seq(), 7);
    // Expired records stay: they are dialling hints.
    assert_eq!(book.recent(10).unwrap().len(), 3);
    assert!(book.forget(&key(2).peer_id()).unwrap());
    assert!(!book.forget(&key(2).peer_id()).unwrap());
    assert_eq!(ids(&book.recent(10).unwrap()), vec![1, 3]);

    // And it all survives a reopen.
    drop((s, book));
    let s = open(&path, NOW + 1000);
    assert_eq!(ids(&s.peer_book().recent(10).unwrap()), vec![1, 3]);
}

#[test]
fn peer_book_is_bounded_evicting_the_least_recently_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(&tmp.path().join(RECORDS_FILE), NOW);
    let book = s.peer_book().with_capacity(3);
    for p in 1..=5u8 {
        book.remember(peer(p, 1, NOW + 100), at(NOW + u64::from(p)))
            .unwrap();
        assert!(book.len().unwrap() <= 3);
    }
    assert_eq!(ids(&book.recent(10).unwrap()), vec![5, 4, 3]);
    // Refreshing 3 makes 4 the least recently seen.
    book.remember(peer(3, 1, NOW + 100), at(NOW + 10)).unwrap();
    book.remember(peer(6, 1, NOW + 100), at(NOW + 11)).unwrap();
    assert_eq!(ids(&book.recent(10).unwrap()), vec![6, 3, 5]);
    // Shrinking the bound applies at the next remember.
    let small = book.clone().with_capacity(1);
    small.remember(peer(7, 1, NOW + 100), at(NOW + 12)).unwrap();
    assert_eq!(ids(&small.recent(10).unwrap()), vec![7]);
    assert_eq!(table_len(&s, BOOK), 1);
    let txn = s.db.begin_read().unwrap();
    assert_eq!(txn.open_table(BOOK_BY_TIME).unwrap().len().unwrap(), 1);
}

#[test]
fn sync_makes_writes_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(&tmp.path().join(RECORDS_FILE), NOW);
    s.put_value(value(1, "a", 1, NOW + 10), at(NOW)).unwrap();
    s.sync().unwrap();
}
