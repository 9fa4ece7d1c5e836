//! The table the benchmark prints: each operation beside its floor.

use std::time::Duration;

use crate::accounts::Accounts;
use crate::feed::Feed;
use crate::measure::{Pair, percentile_ms, row, rows};
use crate::messages::History;
use crate::requests::Requests;

/// Every figure of a run.
pub struct Report {
    pub run: String,
    pub produce: Pair,
    pub redis_get: Pair,
    pub accounts: Accounts,
    pub profile_reads: Pair,
    /// Ack → visible in a cached read, sorted.
    pub visible: Vec<Duration>,
    /// The same, each edit after `IDLE_GAP` of quiet, sorted.
    pub visible_after_idle: Vec<Duration>,
    pub requests: Requests,
    pub messages: Pair,
    pub history: History,
    /// Ack → on the recipient's open stream, sorted.
    pub stream: Vec<Duration>,
    pub feed: Feed,
    pub loaded: crate::loaded::Loaded,
}

impl Report {
    pub fn print(&self) {
        println!("\nDevConnect benchmark (run {})", self.run);
        println!(
            "{:<34} {:>3} {:>9} {:>9} {:>10}   {:>9} {:>9}",
            "operation", "c", "p50 ms", "p99 ms", "ops/s", "p50/floor", "floor/thru"
        );
        let (produce, get) = (Some(self.produce), Some(self.redis_get));
        rows("raw: produce (acks=all)", self.produce, None);
        rows("raw: redis GET", self.redis_get, None);
        rows("POST /v1/auth/signup", self.accounts.signup, produce);
        rows("POST /v1/auth/login", self.accounts.login, produce);
        rows("PATCH /v1/profile", self.accounts.edit, produce);
        rows("GET /v1/profile (cached)", self.profile_reads, get);
        rows("POST /v1/requests/send", self.requests.send, produce);
        rows("POST /v1/requests/review", self.requests.review, produce);
        rows("POST /v1/messages/{to}", self.messages, produce);
        rows("GET history newest 50 (Redis)", self.history.newest, get);
        rows("GET history older 50 (MongoDB)", self.history.older, Some(self.feed.raw_in));
        let stream_ms = |p: f64| percentile_ms(&self.stream, p);
        println!(
            "ack -> message on the recipient's open stream (100 messages): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            stream_ms(0.5),
            stream_ms(0.99),
            stream_ms(1.0)
        );
        self.print_feed();
        let lag_ms = |p: f64| percentile_ms(&self.visible, p);
        println!(
            "ack -> visible in query (cached read, 100 edits): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lag_ms(0.5),
            lag_ms(0.99),
            lag_ms(1.0)
        );
        let idle_ms = |p: f64| percentile_ms(&self.visible_after_idle, p);
        println!(
            "ack -> visible after {} s idle (projector paused, woken by the append; {} edits): p50 {:.2} ms, max {:.2} ms",
            crate::IDLE_GAP.as_secs(),
            self.visible_after_idle.len(),
            idle_ms(0.5),
            idle_ms(1.0)
        );
        println!("(signup and login include argon2id hashing: 19 MiB, 2 passes, on this machine's cores)");
        self.loaded.print();
    }

    fn print_feed(&self) {
        let feed = &self.feed;
        println!("feed, with {} users in the view:", feed.in_view);
        rows("raw: redis ZREVRANGE 51", feed.raw_zrange, None);
        rows("raw: mongo find 50 by _id $in", feed.raw_in, None);
        row("raw: mongo find sort(_id) limit 50", 1, feed.naive, None);
        rows("GET /v1/feed page 1, limit 50", feed.first_page, Some(feed.raw_in));
        row(&format!("GET /v1/feed page {}, limit 50", feed.deep_page), 1, feed.deep, Some(feed.raw_in.one));
        println!("(feed ratios are against the plain MongoDB $in of 50 ids, the dearer of its two primitive reads)");
    }
}
