//! Bus throughput through Lookout's typed API: produce and consume `Frame`s of a given encoded
//! size, protobuf encoding and decoding included; and the same traffic through raw rdkafka
//! (`BaseProducer`/`BaseConsumer`: no headers, no protobuf, nothing per message but the
//! client's own work), the limit on this broker. One JSON line per measurement on stdout.
//!
//! ```sh
//! cargo bench -p lookout-bus --bench bus -- --brokers 127.0.0.1:9092 --size 100 --messages 100000
//! cargo bench -p lookout-bus --bench bus -- --impl raw --brokers 127.0.0.1:9092 --size 100
//! ```
//!
//! Each repeat works in a fresh topic prefix (`{prefix}r{i}.`): one warm-up frame is sent and
//! acknowledged first (it creates the topic and connects the producer), then `--messages`
//! frames are timed from the first enqueue until every one is acknowledged. New consumer
//! groups then read the topic from the beginning, timed from the first handled frame (the
//! warm-up) to the last, so group start-up is not counted: with Lookout, once with
//! `Subscriber::run` (one message per handler call) and once with `Subscriber::run_batched`
//! (up to 1000 per call). `bench/bus/bench_confluent.py` does the same with Python
//! confluent-kafka; `bench/bus/run.py` runs all of them.

use std::{
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use lookout_bus::{Bus, BusConfig, BusError, Compression, Incoming, Rejected, admin, topics};
use lookout_proto::{
    Timestamp,
    v1::{Encoding, Frame},
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

/// First sequence number: its varint has the same length (4 bytes) for every frame sent.
const FIRST_SEQUENCE: u64 = 1 << 21;
/// How long a consume run may take before the bench gives up (messages lost to retention).
const CONSUME_TIMEOUT: Duration = Duration::from_secs(120);

struct Args {
    raw: bool,
    brokers: String,
    size: usize,
    messages: u64,
    prefix: String,
    repeat: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        raw: false,
        brokers: "127.0.0.1:9092".into(),
        size: 100,
        messages: 100_000,
        prefix: format!("bench-{}.", std::process::id()),
        repeat: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue; // passed by `cargo bench`
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--brokers" => args.brokers = value,
            "--size" => args.size = value.parse().map_err(bad)?,
            "--messages" => args.messages = value.parse().map_err(bad)?,
            "--prefix" => args.prefix = value,
            "--repeat" => args.repeat = value.parse().map_err(bad)?,
            "--impl" => {
                args.raw = match value.as_str() {
                    "lookout" => false,
                    "raw" => true,
                    _ => return Err(format!("--impl is lookout or raw, not {value}")),
                }
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(args)
}

/// A frame whose encoded size is exactly `size` bytes (for sizes above ~30).
fn frame_of_size(size: usize) -> Frame {
    let mut frame = Frame {
        camera_id: "bench".into(),
        sequence: FIRST_SEQUENCE,
        capture_time: Some(Timestamp { seconds: 1_800_000_000, nanos: 0 }),
        width: 640,
        height: 480,
        encoding: Encoding::Jpeg as i32,
        data: Bytes::new(),
    };
    let mut len = size.saturating_sub(frame.encoded_len());
    while len > 0 {
        frame.data = Bytes::from(vec![0x5a; len]);
        if frame.encoded_len() <= size {
            break;
        }
        len -= 1;
    }
    frame
}

/// One measurement as a JSON line.
fn report(implementation: &str, op: &str, size: usize, messages: u64, seconds: f64) {
    let rate = messages as f64 / seconds;
    println!(
        r#"{{"impl":"{implementation}","op":"{op}","size":{size},"messages":{messages},"seconds":{seconds:.6},"msg_per_s":{rate:.1},"mb_per_s":{:.3}}}"#,
        rate * size as f64 / 1e6
    );
}

/// Sends the warm-up frame, then `n` timed frames, each with its own acknowledgement
/// (`Publisher::enqueue`, then `Pending::wait`) or as one batch (`Publisher::batch`); returns
/// the timed seconds.
async fn produce(bus: &Bus, frame: &Frame, n: u64, batched: bool) -> Result<f64, BusError> {
    // The warm-up goes through the producer's own path, which creates the topic on brokers
    // that create topics on use (the embedded broker: 4 partitions), as the other clients'
    // first messages do; the typed publisher asks for the partition count, which does not.
    let warm_up = Frame { sequence: FIRST_SEQUENCE - 1, ..frame.clone() };
    let topic = bus.topic_name(topics::FRAMES.name());
    let headers = lookout_bus::Headers::new()
        .with(lookout_bus::headers::CONTENT_TYPE, topics::FRAMES.content_type());
    bus.publish_raw(&topic, Some(b"bench"), Some(&topics::FRAMES.encode(&warm_up)), &headers)
        .await?;
    let publisher = bus.publisher(&topics::FRAMES);
    let mut frame = frame.clone();
    let started = Instant::now();
    if batched {
        let mut batch = publisher.batch();
        for i in 0..n {
            frame.sequence = FIRST_SEQUENCE + i;
            batch.enqueue(&frame, None).await?;
        }
        batch.wait().await?;
    } else {
        let mut pending = Vec::with_capacity(n as usize);
        for i in 0..n {
            frame.sequence = FIRST_SEQUENCE + i;
            pending.push(publisher.enqueue(&frame, None).await?);
        }
        for p in pending {
            p.wait().await?;
        }
    }
    // Every frame is acknowledged: stop the clock before `flush`, which has nothing left to
    // do but sometimes sleeps up to 100 ms in rdkafka's flush loop.
    let seconds = started.elapsed().as_secs_f64();
    bus.flush(Duration::from_secs(30))?;
    Ok(seconds)
}

/// Messages of the frames topic still retained, and whether any were dropped.
async fn retained(bus: &Bus) -> Result<(u64, bool), BusError> {
    let name = bus.topic_name(topics::FRAMES.name());
    let topic = admin::describe(bus).await?.into_iter().find(|t| t.name == name);
    let partitions = topic.map(|t| t.partitions).unwrap_or_default();
    let kept = partitions.iter().map(|p| (p.high - p.low) as u64).sum();
    Ok((kept, partitions.iter().any(|p| p.low > 0)))
}

/// Counts handled frames and notes the time of the first and the last.
#[derive(Clone)]
struct Tally {
    count: Arc<AtomicU64>,
    misshapen: Arc<AtomicU64>,
    span: Arc<Mutex<(Option<Instant>, Option<Instant>)>>,
    total: u64,
    data_len: usize,
    shutdown: CancellationToken,
}

impl Tally {
    fn new(total: u64, data_len: usize) -> Self {
        Self {
            count: Arc::default(),
            misshapen: Arc::default(),
            span: Arc::default(),
            total,
            data_len,
            shutdown: CancellationToken::new(),
        }
    }

    fn frames(&self, frames: impl Iterator<Item = usize>) {
        let mut n = 0;
        for len in frames {
            if len != self.data_len {
                self.misshapen.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
        }
        let before = self.count.fetch_add(n, Ordering::Relaxed);
        if before == 0 {
            self.span.lock().expect("not poisoned").0 = Some(Instant::now());
        }
        if before + n >= self.total {
            self.span.lock().expect("not poisoned").1 = Some(Instant::now());
            self.shutdown.cancel();
        }
    }

    fn seconds(&self) -> Result<f64, String> {
        let handled = self.count.load(Ordering::Relaxed);
        let misshapen = self.misshapen.load(Ordering::Relaxed);
        if misshapen > 0 {
            return Err(format!("{misshapen} frames decoded with the wrong data length"));
        }
        match *self.span.lock().expect("not poisoned") {
            (Some(first), Some(last)) if handled == self.total => Ok((last - first).as_secs_f64()),
            _ => Err(format!("handled {handled} of {} frames in {CONSUME_TIMEOUT:?}", self.total)),
        }
    }

    /// Stops the consumer after [`CONSUME_TIMEOUT`] (messages lost to retention).
    fn guard(&self) -> tokio::task::JoinHandle<()> {
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CONSUME_TIMEOUT).await;
            shutdown.cancel();
        })
    }
}

/// Consumes `total` frames in a new group, one per handler call or in batches of up to 1000;
/// returns the seconds from the first to the last.
async fn consume(bus: &Bus, total: u64, data_len: usize, batched: bool) -> Result<f64, String> {
    let tally = Tally::new(total, data_len);
    let group = format!("{}bench-{batched}", bus.config().topic_prefix);
    let subscriber = bus.subscriber(&topics::FRAMES, &group);
    let timer = tally.guard();
    let shutdown = tally.shutdown.clone();
    let ran = if batched {
        let tally = tally.clone();
        let handler = move |batch: Vec<Incoming<Frame>>| {
            tally.frames(batch.iter().map(|m| m.message.data.len()));
            async { Ok(Rejected::none()) }
        };
        subscriber.run_batched(1000, Duration::ZERO, handler, shutdown).await
    } else {
        let tally = tally.clone();
        let handler = move |m: Incoming<Frame>| {
            tally.frames(std::iter::once(m.message.data.len()));
            async { Ok(()) }
        };
        subscriber.run(handler, shutdown).await
    };
    ran.map_err(|e| e.to_string())?;
    timer.abort();
    tally.seconds()
}

/// Raw rdkafka: the same frames as bytes, no headers, one `BaseProducer` polled every 1000
/// messages; returns the timed seconds.
fn produce_raw(brokers: &str, topic: &str, frame: &Frame, n: u64) -> Result<f64, String> {
    use rdkafka::{
        ClientConfig,
        producer::{BaseProducer, BaseRecord, Producer as _},
    };
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("compression.type", "none")
        .set("linger.ms", "5")
        .create()
        .map_err(|e| e.to_string())?;
    let mut frame = frame.clone();
    frame.sequence = FIRST_SEQUENCE - 1;
    let warm = frame.encode_to_vec();
    producer
        .send(BaseRecord::<str, [u8]>::to(topic).key("bench").payload(&warm))
        .map_err(|(e, _)| e.to_string())?;
    producer.flush(Duration::from_secs(30)).map_err(|e| e.to_string())?;
    // The bytes are made before the clock starts: no protobuf in the loop.
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            frame.sequence = FIRST_SEQUENCE + i;
            frame.encode_to_vec()
        })
        .collect();
    let started = Instant::now();
    for (i, payload) in payloads.iter().enumerate() {
        let partition = ((FIRST_SEQUENCE + i as u64) % 4) as i32;
        let mut record =
            BaseRecord::<str, [u8]>::to(topic).key("bench").payload(payload).partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(30)).map_err(|e| e.to_string())?;
    Ok(started.elapsed().as_secs_f64())
}

/// Raw rdkafka: a `BaseConsumer` in a new group counts `total` messages, decoding nothing.
fn consume_raw(brokers: &str, topic: &str, group: &str, total: u64) -> Result<f64, String> {
    use rdkafka::{
        ClientConfig,
        consumer::{BaseConsumer, Consumer as _},
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| e.to_string())?;
    consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    let (mut count, mut first) = (0u64, None);
    while count < total && Instant::now() < deadline {
        if let Some(Ok(_m)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            count += 1;
        }
    }
    match first {
        Some(first) if count == total => Ok(first.elapsed().as_secs_f64()),
        _ => Err(format!("raw: handled {count} of {total} frames in {CONSUME_TIMEOUT:?}")),
    }
}

async fn run_raw(args: &Args) -> Result<(), String> {
    let frame = frame_of_size(args.size);
    let size = frame.encoded_len();
    let (mut produced, mut produce_s, mut consumed, mut consume_s) = (0, 0.0, 0, 0.0);
    for r in 0..args.repeat {
        let config = BusConfig::new(args.brokers.clone(), "lookout-bench")
            .with_topic_prefix(format!("{}r{r}.", args.prefix));
        let bus = Bus::new(config).map_err(|e| e.to_string())?;
        let topic = bus.topic_name(topics::FRAMES.name());
        let (brokers, t, f, n) =
            (args.brokers.clone(), topic.clone(), frame.clone(), args.messages);
        produce_s += tokio::task::spawn_blocking(move || produce_raw(&brokers, &t, &f, n))
            .await
            .map_err(|e| e.to_string())??;
        produced += args.messages;
        let (kept, _) = retained(&bus).await.map_err(|e| e.to_string())?;
        let (brokers, group) = (args.brokers.clone(), format!("{}raw", args.prefix));
        consume_s +=
            tokio::task::spawn_blocking(move || consume_raw(&brokers, &topic, &group, kept))
                .await
                .map_err(|e| e.to_string())??;
        consumed += kept - 1;
    }
    report("raw-rdkafka", "produce", size, produced, produce_s);
    report("raw-rdkafka", "consume", size, consumed, consume_s);
    Ok(())
}

async fn run(args: &Args) -> Result<(), String> {
    let frame = frame_of_size(args.size);
    let size = frame.encoded_len();
    let (mut produced, mut produce_s, mut consumed, mut consume_s) = (0, 0.0, 0, 0.0);
    let mut batched_s = 0.0;
    for r in 0..args.repeat {
        let mut config = BusConfig::new(args.brokers.clone(), "lookout-bench")
            .with_topic_prefix(format!("{}r{r}.", args.prefix));
        config.compression = Compression::None;
        let bus = Bus::new(config).map_err(|e| e.to_string())?;
        produce_s +=
            produce(&bus, &frame, args.messages, false).await.map_err(|e| e.to_string())?;
        produced += args.messages;

        let (kept, dropped) = retained(&bus).await.map_err(|e| e.to_string())?;
        if dropped || kept != args.messages + 1 {
            eprintln!(
                "retention: {kept} of {} frames kept on {}; consuming those",
                args.messages + 1,
                bus.topic_name(topics::FRAMES.name()),
            );
        }
        // The first frame handled starts the clock, so `kept - 1` frames are timed.
        consume_s += consume(&bus, kept, frame.data.len(), false).await?;
        batched_s += consume(&bus, kept, frame.data.len(), true).await?;
        consumed += kept - 1;
    }
    // The batch API, on a topic of its own (its frames are not read back).
    let mut config = BusConfig::new(args.brokers.clone(), "lookout-bench")
        .with_topic_prefix(format!("{}b.", args.prefix));
    config.compression = Compression::None;
    let bus = Bus::new(config).map_err(|e| e.to_string())?;
    let mut batch_s = 0.0;
    for _ in 0..args.repeat {
        batch_s += produce(&bus, &frame, args.messages, true).await.map_err(|e| e.to_string())?;
    }
    report("lookout-rust", "produce", size, produced, produce_s);
    report("lookout-rust-batched", "produce", size, produced, batch_s);
    report("lookout-rust", "consume", size, consumed, consume_s);
    report("lookout-rust-batched", "consume", size, consumed, batched_s);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bus bench: {e}");
            eprintln!(
                "usage: bus [--impl lookout|raw] [--brokers ADDR] [--size BYTES] [--messages N] [--prefix P] [--repeat R]"
            );
            return ExitCode::from(64);
        }
    };
    let ran = if args.raw { run_raw(&args).await } else { run(&args).await };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bus bench: {e}");
            ExitCode::FAILURE
        }
    }
}
