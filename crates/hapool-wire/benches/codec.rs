//! Encode and decode throughput of the messages on the registrar's hot
//! paths: a REGISTRATION, a HANDLE_RESOLUTION_RESPONSE with 128 PEs and an
//! ENRP HANDLE_TABLE_RESPONSE with 128 PEs.
//!
//! `cargo bench -p hapool-wire --bench codec`

#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hapool_wire::{
    AsapMessage, EnrpBody, EnrpMessage, Message, Policy, PoolElement, PoolElementId, PoolEntries,
    PoolHandle, RegistrarId, ResolutionOutcome, Transport,
};

fn pe(i: u32, with_asap_transport: bool) -> PoolElement {
    let address = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
    PoolElement {
        id: PoolElementId(0x1000_0000 + i),
        home_registrar: RegistrarId(0xabcd_0001),
        registration_life: 30_000,
        user_transport: Transport::tcp((address, 8080).into()),
        policy: Policy::LeastUsed {
            load: i.wrapping_mul(0x0100_0000),
        },
        asap_transport: with_asap_transport.then(|| Transport::tcp((address, 3863).into())),
    }
}

/// Benchmarks decode and encode of `message`.
fn bench_message<M: Message>(c: &mut Criterion, name: &str, message: &M) {
    let bytes = message.to_bytes().unwrap();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| black_box(M::decode(black_box(&bytes)).unwrap()));
    });
    let mut dst = BytesMut::with_capacity(bytes.len());
    group.bench_function("encode", |b| {
        b.iter(|| {
            dst.clear();
            message.encode(&mut dst).unwrap();
            black_box(&dst);
        });
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let handle = PoolHandle::from("web-frontend");
    let registration = AsapMessage::Registration {
        pool_handle: handle.clone(),
        pool_element: pe(1, false),
        auth_token: None,
    };
    bench_message(c, "registration", &registration);
    let response = AsapMessage::HandleResolutionResponse {
        accepted: false,
        pool_handle: handle.clone(),
        outcome: ResolutionOutcome::Members {
            policy: Some(Policy::LeastUsed { load: 0 }),
            elements: (0..128).map(|i| pe(i, false)).collect(),
        },
    };
    bench_message(c, "handle_resolution_response_128", &response);
    let table = EnrpMessage {
        sender: RegistrarId(1),
        receiver: RegistrarId(2),
        body: EnrpBody::HandleTableResponse {
            reject: false,
            more_to_send: true,
            pools: vec![PoolEntries {
                pool_handle: handle,
                elements: (0..128).map(|i| pe(i, true)).collect(),
            }],
        },
    };
    bench_message(c, "enrp_handle_table_response_128", &table);
}

criterion_group!(benches, codec);
criterion_main!(benches);
