// Command interop checks what fschain writes with libraries nobody on the
// fschain project wrote: golang.org/x/mod/sumdb/note for signed notes, and
// the transparency-dev formats and merkle modules for checkpoints,
// tlog-proofs, cosignatures and RFC 6962 proofs. tests/proof.rs runs it
// on real output and on tampered copies.
//
//	interop checkpoint  VKEY FILE   a signed checkpoint
//	interop proof       VKEY FILE   a proof bundle (c2sp.org/tlog-proof)
//	interop consistency VKEY FILE   a consistency proof (JSON)
//	interop cosigned    VKEY WITNESS_VKEY FILE
//	                                a checkpoint cosigned by a witness (cosignature/v1)
//
// Exit 0 and one line "ok: ..." when it holds; exit 1 and the reason when not.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	fnote "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/formats/log"
	tproof "github.com/transparency-dev/formats/proof"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

func main() {
	if len(os.Args) < 4 {
		fail(errors.New("usage: interop checkpoint|proof|consistency VKEY FILE, or cosigned VKEY WITNESS_VKEY FILE"))
	}
	verifier, err := note.NewVerifier(strings.TrimSpace(os.Args[2]))
	if err != nil {
		fail(fmt.Errorf("the log's verifier key: %w", err))
	}
	file := os.Args[len(os.Args)-1]
	data, err := os.ReadFile(file)
	if err != nil {
		fail(err)
	}
	var said string
	switch os.Args[1] {
	case "checkpoint":
		said, err = checkCheckpoint(verifier, data)
	case "proof":
		said, err = checkProof(verifier, data)
	case "consistency":
		said, err = checkConsistency(verifier, data)
	case "cosigned":
		said, err = checkCosigned(verifier, os.Args[3], data)
	default:
		err = fmt.Errorf("unknown check %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
	fmt.Println("ok:", said)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "FAILED:", err)
	os.Exit(1)
}

func open(v note.Verifier, data []byte) (*log.Checkpoint, error) {
	cp, _, _, err := log.ParseCheckpoint(data, v.Name(), v)
	return cp, err
}

func checkCheckpoint(v note.Verifier, data []byte) (string, error) {
	cp, err := open(v, data)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s size %d root %x", cp.Origin, cp.Size, cp.Hash), nil
}

// canonical writes a JSON object's members sorted by key, each value as
// the raw bytes it had: for an object read from canonical JSON (RFC 8785)
// with ASCII keys, the canonical form of the object without the dropped
// member.
func canonical(members map[string]json.RawMessage, drop string) []byte {
	keys := make([]string, 0, len(members))
	for k := range members {
		if k != drop {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		name, _ := json.Marshal(k)
		b.Write(name)
		b.WriteByte(':')
		b.Write(members[k])
	}
	b.WriteByte('}')
	return b.Bytes()
}

func checkProof(v note.Verifier, data []byte) (string, error) {
	var p tproof.TLogProof
	if err := p.Unmarshal(data); err != nil {
		return "", err
	}
	cp, err := open(v, p.Checkpoint)
	if err != nil {
		return "", err
	}
	var extra struct {
		Header json.RawMessage `json:"header"`
		State  *struct {
			Element string          `json:"element"`
			State   json.RawMessage `json:"state"`
			Index   uint64          `json:"index"`
			Size    uint64          `json:"size"`
			Path    []string        `json:"path"`
		} `json:"state"`
	}
	if err := json.Unmarshal(p.ExtraData, &extra); err != nil {
		return "", fmt.Errorf("extra data: %w", err)
	}
	var header map[string]json.RawMessage
	if err := json.Unmarshal(extra.Header, &header); err != nil {
		return "", fmt.Errorf("header: %w", err)
	}
	var claimed string
	if err := json.Unmarshal(header["hash"], &claimed); err != nil {
		return "", fmt.Errorf("header hash: %w", err)
	}
	computed := sha256.Sum256(canonical(header, "hash"))
	if hex.EncodeToString(computed[:]) != claimed {
		return "", fmt.Errorf("the header hashes to %x, not the %s it carries", computed, claimed)
	}
	var height uint64
	if err := json.Unmarshal(header["height"], &height); err != nil || height != p.Index {
		return "", fmt.Errorf("the header is not block %d's", p.Index)
	}
	hash, _ := hex.DecodeString(claimed)
	hashes := make([][]byte, len(p.Hashes))
	for i := range p.Hashes {
		hashes[i] = p.Hashes[i][:]
	}
	leaf := rfc6962.DefaultHasher.HashLeaf(hash)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, p.Index, cp.Size, leaf, hashes, cp.Hash); err != nil {
		return "", fmt.Errorf("block %d in the checkpoint: %w", p.Index, err)
	}
	said := fmt.Sprintf("block %d (%s) is in %s's tree of size %d", p.Index, claimed, cp.Origin, cp.Size)
	if extra.State == nil {
		return said, nil
	}
	var stateRootHex string
	if err := json.Unmarshal(header["state_root"], &stateRootHex); err != nil {
		return "", fmt.Errorf("state root: %w", err)
	}
	stateRoot, _ := hex.DecodeString(stateRootHex)
	stateHash := sha256.Sum256(extra.State.State)
	leafData := append(append([]byte(extra.State.Element), 0), stateHash[:]...)
	path := make([][]byte, len(extra.State.Path))
	for i, h := range extra.State.Path {
		if path[i], err = hex.DecodeString(h); err != nil {
			return "", fmt.Errorf("state path: %w", err)
		}
	}
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, extra.State.Index, extra.State.Size,
		rfc6962.DefaultHasher.HashLeaf(leafData), path, stateRoot); err != nil {
		return "", fmt.Errorf("%s's state in block %d: %w", extra.State.Element, p.Index, err)
	}
	return fmt.Sprintf("%s = %s in %s", extra.State.Element, extra.State.State, said), nil
}

func checkConsistency(v note.Verifier, data []byte) (string, error) {
	var doc struct {
		Type  string   `json:"type"`
		Old   string   `json:"old"`
		New   string   `json:"new"`
		Proof []string `json:"proof"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return "", err
	}
	if doc.Type != "fschain consistency proof v1" {
		return "", fmt.Errorf("type %q", doc.Type)
	}
	old, err := open(v, []byte(doc.Old))
	if err != nil {
		return "", fmt.Errorf("old: %w", err)
	}
	newer, err := open(v, []byte(doc.New))
	if err != nil {
		return "", fmt.Errorf("new: %w", err)
	}
	hashes := make([][]byte, len(doc.Proof))
	for i, h := range doc.Proof {
		if hashes[i], err = base64.StdEncoding.DecodeString(h); err != nil {
			return "", err
		}
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, old.Size, newer.Size, hashes, old.Hash, newer.Hash); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s: size %d extends size %d", old.Origin, newer.Size, old.Size), nil
}

func checkCosigned(v note.Verifier, witnessKey string, data []byte) (string, error) {
	witness, err := fnote.NewVerifierForCosignatureV1(strings.TrimSpace(witnessKey))
	if err != nil {
		return "", fmt.Errorf("the witness key: %w", err)
	}
	cp, _, n, err := log.ParseCheckpoint(data, v.Name(), v, witness)
	if err != nil {
		return "", err
	}
	for _, s := range n.Sigs {
		if s.Name == witness.Name() && s.Hash == witness.KeyHash() {
			t, err := fnote.CoSigV1Timestamp(s)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%s size %d cosigned by %s at %d", cp.Origin, cp.Size, s.Name, t.Unix()), nil
		}
	}
	return "", fmt.Errorf("no cosignature by %s", witness.Name())
}
