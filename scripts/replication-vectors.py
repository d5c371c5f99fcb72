#!/usr/bin/env python3
# The replication golden vectors of docs/replication.md (format 2), computed
# without fschain: Python's cryptography (Ed25519), json and hashlib, and
# RFC 6962 as the RFC states it. `python3 scripts/replication-vectors.py`.
import hashlib, json
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
H=lambda b: hashlib.sha256(b).digest()
seed=bytes([7])*32
sk=Ed25519PrivateKey.from_private_bytes(seed)
pk=sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
data=b"zstd bytes"; cs=4
chunks=[data[i:i+cs] for i in range(0,len(data),cs)]
hs=[H(c) for c in chunks]
leaves=[H(b"\x00"+h) for h in hs]
node=lambda l,r: H(b"\x01"+l+r)
def mth(ls):
    if len(ls)==1: return ls[0]
    k=1
    while k*2<len(ls): k*=2
    return node(mth(ls[:k]),mth(ls[k:]))
root=mth(leaves)
header={"chain":"host1","event_count":0,"events_root":H(b"").hex(),"first_seq":None,"height":0,"last_seq":None,"prev":None,"state_root":H(b"").hex(),"time":"2026-11-21T10:00:00.000000Z","version":1}
hdr_body=json.dumps(header,sort_keys=True,separators=(",",":")).encode()
header["hash"]=H(hdr_body).hex()
m={"chain":"host1","header":header,"height":0,"key":pk,"parent":None,
   "stream":{"bytes":len(data),"chunk_size":cs,"chunks":len(chunks),"chunks_root":root.hex(),"compression":"zstd","sha256":H(data).hex()},"version":2}
jcs=lambda v: json.dumps(v,sort_keys=True,separators=(",",":"),ensure_ascii=False).encode()
sig=sk.sign(b"fschain block manifest v2\n"+jcs(m)).hex()
m["signature"]=sig
meta=jcs(m)
frame=b"FSC1"+bytes([1])+len(meta).to_bytes(4,"big")+meta+(0).to_bytes(4,"big")
# chunk 1: proof = [leaf0, leaf2]
cm={"chain":"host1","count":3,"height":0,"index":1,"parent":None,"proof":[leaves[0].hex(),leaves[2].hex()],"sha256":hs[1].hex(),"stream_sha256":H(data).hex()}
cmeta=jcs(cm)
cframe=b"FSC1"+bytes([2])+len(cmeta).to_bytes(4,"big")+cmeta+len(chunks[1]).to_bytes(4,"big")+chunks[1]
print("public key:",pk)
print("chunks root:",root.hex())
print("manifest signature:",sig)
print("manifest frame SHA-256:",H(frame).hex())
print("chunk frame:",cframe.hex())
print("manifest metadata:",meta.decode())
