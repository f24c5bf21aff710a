//! librdkafka's produce call, made directly rather than through `rdkafka`'s `send`, so that
//! a message costs no copy and no allocation the sink does not need:
//!
//! - the value and key are not copied (`rdkafka` always passes `RD_KAFKA_MSG_F_COPY`, one
//!   allocation and a copy of the whole envelope per message): librdkafka reads them from
//!   the envelope's own buffer, which the message's delivery opaque keeps alive until its
//!   delivery report;
//! - the topic is a handle looked up once per batch ([`Topics`]), not a name turned into a
//!   `CString` and looked up per message;
//! - the headers are passed as name/value pairs borrowed from the envelope, which librdkafka
//!   copies into its own header list once, instead of an `OwnedHeaders` built up one
//!   `CString` and one librdkafka header at a time.
//!
//! Delivery reports still arrive through `rdkafka`'s producer context: the opaque is the
//! `Box<Delivery>` its `ProducerContext::DeliveryOpaque` expects.

use std::ffi::{CString, c_void};
use std::ptr::NonNull;

use rdkafka::bindings::{
    rd_kafka_error_code, rd_kafka_error_destroy, rd_kafka_last_error, rd_kafka_produceva,
    rd_kafka_t, rd_kafka_topic_destroy, rd_kafka_topic_new, rd_kafka_topic_t, rd_kafka_vtype_t,
    rd_kafka_vu_s__bindgen_ty_1 as Value, rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 as Mem,
    rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 as HeaderValue, rd_kafka_vu_t,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;

use super::encoding::Message;
use super::sink::{Delivery, KafkaProducer};

/// Topic handles of one batch, by name. A batch renders few topics (usually one), so a list
/// searched in order beats a map.
pub(super) struct Topics {
    rk: *mut rd_kafka_t,
    handles: Vec<(String, NonNull<rd_kafka_topic_t>)>,
}

impl Topics {
    pub(super) fn new(producer: &KafkaProducer) -> Self {
        Self {
            rk: producer.client().native_ptr(),
            handles: Vec::new(),
        }
    }

    /// The handle of `name`, created on first use.
    fn get(&mut self, name: &str) -> Result<NonNull<rd_kafka_topic_t>, KafkaError> {
        if let Some((_, t)) = self.handles.iter().find(|(n, _)| n == name) {
            return Ok(*t);
        }
        let invalid = || KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTopic);
        let cname = CString::new(name).map_err(|_| invalid())?;
        // SAFETY: `rk` is the live client of the producer this batch holds; a null
        // configuration takes the producer's default topic settings (its partitioner).
        let handle = unsafe { rd_kafka_topic_new(self.rk, cname.as_ptr(), std::ptr::null_mut()) };
        let Some(handle) = NonNull::new(handle) else {
            // SAFETY: reads the calling thread's last librdkafka error, set by the call above.
            let code = unsafe { rd_kafka_last_error() };
            return Err(KafkaError::MessageProduction(code.into()));
        };
        self.handles.push((name.to_string(), handle));
        Ok(handle)
    }
}

impl Drop for Topics {
    fn drop(&mut self) {
        for (_, handle) in self.handles.drain(..) {
            // SAFETY: each handle was created by `rd_kafka_topic_new` and is released once;
            // messages enqueued with it hold references of their own.
            unsafe { rd_kafka_topic_destroy(handle.as_ptr()) };
        }
    }
}

/// What a refused message hands back.
pub(super) struct Refusal {
    pub code: RDKafkaErrorCode,
    /// The opaque, the message's key and value with it: the caller may try again.
    pub delivery: Box<Delivery>,
}

/// The argument list of one message, reused across a batch.
#[derive(Default)]
pub(super) struct Args(Vec<rd_kafka_vu_t>);

fn arg(vtype: rd_kafka_vtype_t, u: Value) -> rd_kafka_vu_t {
    rd_kafka_vu_t { vtype, u }
}

impl Args {
    /// Hands `message` to librdkafka with `delivery` as its opaque; the key and value must
    /// be the ones `delivery` holds, which keeps them alive until the delivery report.
    pub(super) fn produce(
        &mut self,
        topics: &mut Topics,
        message: &Message<'_>,
        delivery: Box<Delivery>,
    ) -> Result<(), Refusal> {
        let rkt = match topics.get(&message.topic) {
            Ok(t) => t,
            Err(e) => {
                return Err(Refusal {
                    code: e
                        .rdkafka_error_code()
                        .unwrap_or(RDKafkaErrorCode::InvalidTopic),
                    delivery,
                });
            }
        };
        let args = &mut self.0;
        args.clear();
        args.push(arg(
            rd_kafka_vtype_t::RD_KAFKA_VTYPE_RKT,
            Value { rkt: rkt.as_ptr() },
        ));
        // No RD_KAFKA_VTYPE_MSGFLAGS: flags 0, neither copy nor free the value and key.
        if let Some(payload) = delivery.payload() {
            args.push(arg(
                rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
                Value {
                    mem: Mem {
                        ptr: payload.as_ptr() as *mut c_void,
                        size: payload.len(),
                    },
                },
            ));
        }
        let key = delivery.key();
        args.push(arg(
            rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY,
            Value {
                mem: Mem {
                    ptr: key.as_ptr() as *mut c_void,
                    size: key.len(),
                },
            },
        ));
        args.push(arg(
            rd_kafka_vtype_t::RD_KAFKA_VTYPE_TIMESTAMP,
            Value {
                i64_: message.timestamp,
            },
        ));
        for (name, value) in &message.headers {
            args.push(arg(
                rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADER,
                Value {
                    header: HeaderValue {
                        name: name.as_ptr(),
                        val: value.as_ptr() as *const c_void,
                        size: value.len() as isize,
                    },
                },
            ));
        }
        let opaque = Box::into_raw(delivery);
        args.push(arg(
            rd_kafka_vtype_t::RD_KAFKA_VTYPE_OPAQUE,
            Value {
                ptr: opaque as *mut c_void,
            },
        ));
        // SAFETY: every pointer in `args` is valid for the call: the topic handle is held by
        // `topics`, header names and values by `message` (librdkafka copies them), and the key
        // and value by the opaque, which librdkafka owns from a successful call until it
        // hands it back with the delivery report, after its last read of them.
        let error = unsafe { rd_kafka_produceva(topics.rk, args.as_ptr(), args.len()) };
        if error.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null error is ours to read and destroy; on failure librdkafka kept
        // nothing, so the opaque is ours again.
        let code = unsafe {
            let code = rd_kafka_error_code(error);
            rd_kafka_error_destroy(error);
            code
        };
        Err(Refusal {
            code: code.into(),
            // SAFETY: `opaque` came from `Box::into_raw` above and librdkafka refused it.
            delivery: unsafe { Box::from_raw(opaque) },
        })
    }
}
