//! Header maps kept for reuse, per thread. An HTTP/1.1 exchange on the inline path builds two
//! maps (the client's request head, the upstream's response head) and is done with each a
//! moment later (the request once it is sent upstream, the response once its head is written
//! to the client). A new map is two allocations and the initialisation of its index; a kept
//! one is cleared and handed out again.

use std::cell::RefCell;

use http::HeaderMap;

/// Most maps a thread keeps: more than the maps an HTTP/1.1 exchange holds at once times the
/// exchanges a thread has in flight between two returns, as a rule; beyond it maps are freed.
const KEEP: usize = 64;
/// A map grown past this many fields (a rare, large head) is freed, not kept.
const MAX_FIELDS: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for at least `fields` fields: a kept one when the thread has one.
pub fn headers(fields: usize) -> HeaderMap {
    let kept = SPARE
        .try_with(|spare| spare.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten();
    match kept {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Keeps `map` for a later [`headers`], cleared; frees it when the thread keeps enough or the
/// map is large.
pub fn keep(mut map: HeaderMap) {
    if map.capacity() > MAX_FIELDS || map.capacity() == 0 {
        return;
    }
    map.clear();
    let _ = SPARE.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut()
            && spare.len() < KEEP
        {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_kept_map_comes_back_empty_with_its_room() {
        let mut map = headers(8);
        map.insert("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        map.insert(http::header::HOST, HeaderValue::from_static("h"));
        let room = map.capacity();
        keep(map);
        let again = headers(4);
        assert!(again.is_empty(), "a kept map is handed out cleared");
        assert_eq!(again.capacity(), room, "the kept map, not a new one");
        assert!(again.get("x-a").is_none() && again.get_all("x-a").iter().next().is_none());
    }

    #[test]
    fn large_maps_and_surplus_maps_are_not_kept() {
        // Each test runs on its own thread: this thread's spare list starts empty.
        let mut large = HeaderMap::with_capacity(MAX_FIELDS * 2);
        large.insert("x-a", HeaderValue::from_static("1"));
        keep(large);
        assert_eq!(SPARE.with(|s| s.borrow().len()), 0);
        for _ in 0..KEEP + 5 {
            keep(HeaderMap::with_capacity(8));
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), KEEP);
        // A request for more room than a kept map has gets it.
        let map = headers(40);
        assert!(map.capacity() >= 40);
    }
}
