//! A real Kafka-protocol broker for tests: tansu (`$TANSU`, else `PATH`; see
//! `kubesim::tools`), with in-memory storage, on a loopback port; and a consumer that reads
//! everything from the beginning in the background.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

/// The tansu binary; a test that needs Kafka fails loudly without it.
pub fn binary() -> PathBuf {
    kubesim::tools::TANSU.require()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker process; SIGKILLed when dropped.
pub struct Tansu {
    bin: PathBuf,
    port: u16,
    child: Child,
}

impl Tansu {
    /// Starts a broker on a free port and waits until it listens.
    pub fn start() -> Tansu {
        Tansu::start_on(free_port())
    }

    /// Starts a broker on `port` (again, after [`Tansu::kill`]) and waits until it listens.
    pub fn start_on(port: u16) -> Tansu {
        let bin = binary();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let broker = Tansu { bin, port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    /// `host:port` for clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the broker (its in-memory topics are gone with it).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Creates a topic (an existing one is fine: a client may have auto-created it).
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(&self.bin)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .expect("tansu topic create");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.to_lowercase().contains("exist"),
            "topic create {name}: {stderr}"
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// The key bytes.
    pub key: Vec<u8>,
    /// `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Reads `topic` (all `partitions`) from the beginning into a shared list, in the background,
/// for as long as it lives. (Not "up to the high watermark": tansu counts record batches,
/// not records, in its offsets, so a watermark can be lower than what was written.)
pub struct Collector {
    records: Arc<Mutex<Vec<Record>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A consumer (of group `group`, committing nothing) assigned every partition of `topics`
/// (name, partition count) from the beginning.
pub fn consumer(bootstrap: &str, group: &str, topics: &[(&str, i32)]) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for (topic, partitions) in topics {
        for p in 0..*partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

impl Collector {
    /// Starts reading.
    pub fn start(bootstrap: &str, topic: &str, partitions: i32) -> Collector {
        let consumer = consumer(bootstrap, "lookout-collector", &[(topic, partitions)]);
        let records: Arc<Mutex<Vec<Record>>> = Arc::default();
        let out = records.clone();
        let task = tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(m) => out.lock().unwrap().push(Record {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().unwrap_or_default().to_vec(),
                        value: m.payload().map(<[u8]>::to_vec),
                    }),
                    Err(e) => eprintln!("consumer: {e}"),
                }
            }
        });
        Collector { records, task }
    }

    /// Everything read so far, per partition in offset order.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
