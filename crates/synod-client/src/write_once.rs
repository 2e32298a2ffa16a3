//! The write-once variable held by a synod cluster.

use crate::client::{Client, Error};
use crate::txn::{get, put, Txn};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use synod_etcd::pb::etcdserverpb as pb;
use synod_etcd::pb::mvccpb;
use synod_protocols::write_once::WriteOnce;

/// A write-once variable stored under one key of a synod cluster: the first
/// `try_initialize` to reach the leader creates the key, every later one
/// finds it. Raft orders the creations, so every caller everywhere learns
/// the same value. Values are JSON.
pub struct ServiceWriteOnce<T> {
    client: Client,
    key: Vec<u8>,
    _value: PhantomData<fn() -> T>,
}

impl<T> ServiceWriteOnce<T> {
    pub fn new(client: Client, key: impl Into<Vec<u8>>) -> Self {
        ServiceWriteOnce {
            client,
            key: key.into(),
            _value: PhantomData,
        }
    }
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::Protocol(format!(
            "{} holds no value of this type: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

fn first_kv(r: &pb::ResponseOp) -> Option<&mvccpb::KeyValue> {
    match &r.response {
        Some(pb::response_op::Response::ResponseRange(r)) => r.kvs.first(),
        _ => None,
    }
}

impl<T: Serialize + DeserializeOwned> WriteOnce<T> for ServiceWriteOnce<T> {
    type Error = Error;

    async fn try_initialize(&self, value: T) -> Result<T, Error> {
        let bytes = serde_json::to_vec(&value).map_err(|e| Error::Protocol(e.to_string()))?;
        // One transaction decides: create if absent, else read the winner.
        // Sent once: repeating it after a lost answer is harmless too (it
        // would find the key), but the caller hears of the failure.
        let r = self
            .client
            .txn(
                Txn::new()
                    .if_absent(&self.key)
                    .then(put(self.key.clone(), bytes, 0))
                    .otherwise(get(self.key.clone())),
            )
            .await?;
        if r.succeeded {
            return Ok(value);
        }
        let kv = r
            .responses
            .first()
            .and_then(first_kv)
            .ok_or_else(|| Error::Protocol("the key existed but was not read".into()))?;
        decode(&self.key, &kv.value)
    }

    async fn final_value(&self) -> Result<T, Error> {
        loop {
            let (rev, kvs) = self.client.get_prefix(&self.key).await?;
            if let Some(kv) = kvs.iter().find(|kv| kv.key == self.key) {
                return decode(&self.key, &kv.value);
            }
            // Not decided yet: wait for the put, watching from just after the
            // read, so a put between the read and the watch is not missed.
            let mut events = self.client.watch(self.key.clone(), rev + 1);
            while let Some(e) = events.recv().await {
                if let Some(kv) = e.kv.filter(|kv| kv.key == self.key && kv.version > 0) {
                    return decode(&self.key, &kv.value);
                }
            }
        }
    }
}
