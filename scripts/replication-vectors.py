#!/usr/bin/env python3
# The replication golden vectors of docs/replication.md (format 3), computed
# without fschain: Python's cryptography (Ed25519), json and hashlib.
# `python3 scripts/replication-vectors.py`.
import hashlib, json
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
H=lambda b: hashlib.sha256(b).digest()
jcs=lambda v: json.dumps(v,sort_keys=True,separators=(",",":"),ensure_ascii=False).encode()
frame=lambda kind,meta,payload: b"FSC1"+bytes([kind])+len(meta).to_bytes(4,"big")+meta+len(payload).to_bytes(4,"big")+payload
seed=bytes([7])*32
sk=Ed25519PrivateKey.from_private_bytes(seed)
pk=sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
attempt=(bytes([1])*16).hex()
data=b"zstd bytes"; cs=4
chunks=[data[i:i+cs] for i in range(0,len(data),cs)]
header={"chain":"host1","event_count":0,"events_root":H(b"").hex(),"first_seq":None,"height":0,"last_seq":None,"prev":None,"state_root":H(b"").hex(),"time":"2026-11-21T10:00:00.000000Z","version":1}
header["hash"]=H(jcs(header)).hex()
m={"chain":"host1","header":header,"height":0,"key":pk,"parent":None,
   "stream":{"attempt":attempt,"chunk_size":cs,"compression":"zstd"},"version":3}
m["signature"]=sk.sign(b"fschain block manifest v3\n"+jcs(m)).hex()
mframe=frame(1,jcs(m),b"")
def chunk(i):
    c={"attempt":attempt,"chain":"host1","height":0,"index":i,"last":i==len(chunks)-1,"sha256":H(chunks[i]).hex()}
    c["signature"]=sk.sign(b"fschain block chunk v3\n"+jcs(c)).hex()
    return c
print("public key:",pk)
print("manifest signature:",m["signature"])
print("manifest frame SHA-256:",H(mframe).hex())
print("last chunk signature:",chunk(2)["signature"])
print("chunk frame:",frame(2,jcs(chunk(1)),chunks[1]).hex())
print("manifest metadata:",jcs(m).decode())
