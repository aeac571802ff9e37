//! `scale` (issue 14, target 5): one `baton serve` with 10,000 workflows active at once, and
//! a store of 1,000,000 finished workflows. Opt-in (`cargo bench --bench baton_bench --
//! scale`): it takes minutes and gigabytes of disk.

use super::*;

/// Open files per process the 10,000-active run needs: three per running step.
const FD_LIMIT: u64 = 65_536;

/// The server's threads and open descriptors, from `/proc`.
fn threads_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find(|l| l.starts_with("Threads:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (threads, fds)
}

/// Raises this process's open-file limit (inherited by the server) where it may.
fn raise_limit(active: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let _ = setrlimit(Resource::RLIMIT_NOFILE, FD_LIMIT, FD_LIMIT);
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // The server's own rule (`engine::raise_fd_limit`): 3 per attempt, 256 kept back.
    let fits = (hard.saturating_sub(256) / baton::engine::FDS_PER_ATTEMPT) as usize;
    if fits < active {
        println!(
            "  (open-file hard limit {hard}: at most {fits} steps run at once, the rest of the \
             {active} wait for a slot)"
        );
    }
    fits.min(active)
}

pub(super) fn scale(r: &mut Report, rt: &tokio::runtime::Runtime) {
    active(r);
    stored(r, rt);
}

/// 10,000 workflows whose step sleeps, all running at once in one server.
pub(super) fn active(r: &mut Report) {
    r.section("target 5: 10,000 workflows active at once in one process");
    let n = 10_000;
    let running = raise_limit(n);
    let dir = r.dir.join("scale-active");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("baton.db");
    let cap = (n + 500).to_string();
    let active = |db: &Path| {
        count(
            db,
            "SELECT count(*) FROM workflows WHERE status NOT IN ('completed', 'failed', 'cancelled')",
            [],
        )
    };
    let (mut s, _) = Server::start(&db, &dir, &[("BATON_MAX_CONCURRENT_STEPS", cap.as_str())]);
    let pid = s.child.id();
    s.call("workflow_monitor", json!({}));
    let idle = s.rss_kb();
    let (t0, f0) = threads_fds(pid);
    let def = json!({"name": "sleeper", "steps": [{"id": "nap", "run": ["sleep", "120"]}]});
    let t = Instant::now();
    let mut curve = Vec::new();
    for i in 0..n {
        s.call("invoke_async", json!({"workflow": def}));
        if (i + 1) % 2000 == 0 {
            curve.push((i + 1, s.rss_kb()));
        }
    }
    let submitted = t.elapsed();
    let all_running = poll_until("every step running", Duration::from_secs(300), || {
        count_running(&db) >= running as i64
    });
    let in_flight = active(&db);
    let busy = s.rss_kb();
    let (t1, f1) = threads_fds(pid);
    let mut mon = Samples::default();
    for _ in 0..20 {
        mon.push(s.call("workflow_monitor", json!({})).1);
    }
    r.row(
        &format!("   submitted {n} (invoke_async, one at a time)"),
        format!("{:.1} s", submitted.as_secs_f64()),
        "",
        None,
    );
    r.row(
        &format!("   {running} steps running at once, {in_flight} workflows active"),
        format!("{:.1} s after the last submit", all_running.as_secs_f64()),
        "",
        None,
    );
    r.row(
        "   RSS idle -> every step running",
        format!(
            "{:.1} -> {:.1} MB",
            idle as f64 / 1024.0,
            busy as f64 / 1024.0
        ),
        "",
        None,
    );
    let curve_s: Vec<String> = curve
        .iter()
        .map(|(k, kb)| format!("{k}: {:.0}", *kb as f64 / 1024.0))
        .collect();
    r.row("   RSS (MB) while submitting", curve_s.join(", "), "", None);
    r.row(
        "   RSS per active workflow (over idle)",
        format!(
            "{:.1} KB",
            busy.saturating_sub(idle) as f64 / in_flight.max(1) as f64
        ),
        "",
        None,
    );
    r.row(
        "   threads idle -> busy",
        format!("{t0} -> {t1}"),
        "bounded (runtime workers + blocking pool, <= 512)",
        None,
    );
    r.row(
        "   open descriptors idle -> busy",
        format!(
            "{f0} -> {f1} ({:.2} per running step)",
            (f1 - f0) as f64 / running as f64
        ),
        "bounded",
        None,
    );
    r.row(
        &format!("   workflow_monitor with {n} active (20)"),
        p50_95(&mon),
        "",
        None,
    );
    let done = poll_until("every workflow completed", Duration::from_secs(600), || {
        count_status(&db, "completed") >= n as i64
    });
    let failed = count_status(&db, "failed");
    r.row(
        &format!("T5 all {n} complete"),
        format!("{:.1} s after all ran, {failed} failed", done.as_secs_f64()),
        "all complete",
        Some(failed == 0),
    );
    s.kill9();
}

/// Copies the `seed` finished workflows already in `db` until it holds `target`, table by
/// table with every key shifted, so the copies are distinct workflows with the seed's rows.
fn replicate(db: &Path, target: usize) -> usize {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("PRAGMA synchronous=OFF; PRAGMA cache_size=-262144;")
        .unwrap();
    let seed: i64 = conn
        .query_row("SELECT max(wid) FROM workflows", [], |x| x.get(0))
        .unwrap();
    let gseq: i64 = conn
        .query_row("SELECT coalesce(max(gseq), 0) FROM events", [], |x| {
            x.get(0)
        })
        .unwrap();
    let columns = |table: &str| -> Vec<String> {
        let mut st = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap();
        st.query_map([], |x| x.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let copies = target / seed as usize;
    let mut statements = Vec::new();
    for table in ["workflows", "definitions", "steps", "attempts", "events"] {
        let cols = columns(table);
        let exprs: Vec<String> = cols
            .iter()
            .map(|c| match c.as_str() {
                "wid" => "wid + ?1 * ?2".to_owned(),
                "id" if table == "workflows" => "id || '-' || ?1".to_owned(),
                "gseq" => "gseq + ?1 * ?3".to_owned(),
                c => c.to_owned(),
            })
            .collect();
        statements.push(format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {table} WHERE wid <= ?2",
            cols.join(", "),
            exprs.join(", ")
        ));
    }
    for k in 1..copies as i64 {
        conn.execute_batch("BEGIN").unwrap();
        for sql in &statements {
            // Each statement uses the parameters it names.
            let mut st = conn.prepare_cached(sql).unwrap();
            let n = st.parameter_count();
            let all = [k, seed, gseq];
            st.execute(rusqlite::params_from_iter(&all[..n])).unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    conn.query_row("SELECT count(*) FROM workflows", [], |x| x.get::<_, i64>(0))
        .unwrap() as usize
}

/// A store of 1,000,000 finished 10-step workflows: reads, start-up, adoption, size.
pub(super) fn stored(r: &mut Report, rt: &tokio::runtime::Runtime) {
    r.section("target 5: a store of 1,000,000 finished workflows");
    let dir = r.dir.join("scale-stored");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("baton.db");
    let t = Instant::now();
    populate(rt, &db, 10_000);
    let seed_bytes = file_size(&db) as f64 / 10_000.0;
    let total = replicate(&db, 1_000_000);
    let bytes = file_size(&db) as f64 / total as f64;
    println!(
        "  (made {total} finished workflows in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    r.row(
        "   store bytes per workflow: 10,000 -> 1,000,000 stored",
        format!(
            "{seed_bytes:.0} -> {bytes:.0} B ({:.2}x)",
            bytes / seed_bytes
        ),
        "linear (~1x)",
        Some((0.8..=1.25).contains(&(bytes / seed_bytes))),
    );

    let mut up = Samples::default();
    for _ in 0..7 {
        let (s, d) = Server::start(&db, &dir, &[]);
        up.push(d);
        s.close();
    }
    r.row(
        "T5 start-up to first answer, 1,000,000 stored (7)",
        p50_95(&up),
        "<= 50 ms",
        Some(up.p50() <= 50.0),
    );

    let env = [("BATON_MAX_CONCURRENT_STEPS", "2000")];
    let (mut s, _) = Server::start(&db, &dir, &env);
    // 450 workflows spread over the whole store (a fixed LCG: the same picks every run).
    let ids: Vec<String> = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut q = conn
            .prepare("SELECT id FROM workflows WHERE wid = ?1")
            .unwrap();
        let mut x: u64 = 0x9e37_79b9;
        (0..450)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let wid = (x >> 33) % total as u64 + 1;
                q.query_row([wid as i64], |x| x.get(0)).unwrap()
            })
            .collect()
    };
    let st = status_samples(&mut s, &ids);
    r.row(
        &format!("T5 invoke_status, 1,000,000 stored ({})", st.0.len()),
        p50_95(&st),
        "p95 <= 2 ms",
        Some(st.p95() <= 2.0),
    );

    // Adoption: 1,000 in-flight steps, kill -9, a new process re-runs every one.
    let marks = dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let nap = json!({"name": "napper", "steps": [marking_step(&marks)]});
    // The nappers' rows come after every stored one: counting them is a range read by key.
    let before = count(&db, "SELECT coalesce(max(wid), 0) FROM workflows", []);
    for _ in 0..1000 {
        s.call("invoke_async", json!({"workflow": nap}));
    }
    let marked = |suffix: &str| marks_ending(&marks, suffix);
    poll_until("1000 first attempts", Duration::from_secs(120), || {
        marked(".1") >= 1000
    });
    let mut mon = Samples::default();
    for i in 0..120 {
        let (_, d) = s.call("workflow_monitor", json!({"limit": 50}));
        if i >= 20 {
            mon.push(d);
        }
    }
    r.row(
        "T5 workflow_monitor, 1,000 active of 1,001,000, limit 50 (100)",
        p50_95(&mon),
        "p95 <= 5 ms",
        Some(mon.p95() <= 5.0),
    );
    s.kill9();
    let t = Instant::now();
    let (s2, first) = Server::start(&db, &dir, &env);
    // Adoption is the takeover in the store: every workflow leased by the new process and
    // its step's next attempt committed as started. Re-running the steps is 1,000 spawns of
    // a shell on top of it.
    poll_until("1000 adopted", Duration::from_secs(120), || {
        count(
            &db,
            "SELECT count(*) FROM steps WHERE wid > ?1 AND status = 'running' AND attempts >= 2",
            [before],
        ) >= 1000
    });
    let adopted = t.elapsed();
    poll_until("1000 restarted attempts", Duration::from_secs(120), || {
        marked(".2") >= 1000
    });
    let rerun = t.elapsed();
    r.row(
        "   new process: first answer",
        ms(first.as_secs_f64() * 1000.0),
        "",
        None,
    );
    r.row(
        "T5 adoption: 1,000 in-flight workflows taken over after kill -9",
        ms(adopted.as_secs_f64() * 1000.0),
        "<= 1 s",
        Some(adopted <= Duration::from_secs(1)),
    );
    r.row(
        "   every one of the 1,000 steps running again (1,000 shell spawns)",
        ms(rerun.as_secs_f64() * 1000.0),
        "",
        None,
    );
    s2.kill9();
}
