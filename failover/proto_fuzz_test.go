package failover

import (
	"bytes"
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/stack"
	"github.com/zppratt/rfsis/stack/tcp"
)

// validStream is what A sends B in a session: HELLO then a sample of each
// type. It leaves out OPEN and large payloads: the fuzzer minimizes every
// new input it finds, which takes long on kilobytes, and FuzzParseBody
// covers OPEN's body.
func validStream(t testing.TB) []byte {
	e := NewEncoder(testKey, nonceA)
	out, err := e.AppendFrame(nil, &Message{Type: MsgHello, Epoch: 3, Role: 1})
	require.NoError(t, err)
	require.NoError(t, e.Bind(nonceB))
	for _, m := range samples(t) {
		if m.Type == MsgOpen || len(m.Data) > 100 {
			continue
		}
		out, err = e.AppendFrame(out, &m)
		require.NoError(t, err)
	}
	return out
}

// macOK checks a frame's MAC independently of the Decoder.
func macOK(frame, ctx []byte) bool {
	if len(frame) < 4+minLength {
		return false
	}
	end := len(frame) - 16
	return hmac.Equal(frameTag(testKey, ctx, frame[:end]), frame[end:])
}

// chunkReader returns its data in reads of the sizes the fuzzer chose.
type chunkReader struct {
	data, sizes []byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := len(r.data)
	if len(r.sizes) > 0 {
		n = int(r.sizes[0]) + 1
		r.sizes = append(r.sizes[1:], r.sizes[0])
	}
	n = min(n, len(r.data), len(p))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

// FuzzDecode feeds arbitrary bytes, in arbitrary pieces, through Feed or
// Fill. The Decoder must not panic, must fail only with its sentinels and
// stay failed, and must return no message whose frame an independent
// check of the MAC does not pass, with the right context: all zeros for
// the first frame, then the peer's nonce and ours.
func FuzzDecode(f *testing.F) {
	stream := validStream(f)
	f.Add(stream, []byte{}, false)
	f.Add(stream, []byte{0}, true)
	f.Add(stream, []byte{6, 200, 31}, false)
	f.Add(stream, []byte{3, 90}, true)
	f.Add(stream[:200], []byte{10}, false)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff}, []byte{}, true)
	f.Add([]byte{0, 0, 0, 33}, []byte{}, false)
	corrupt := bytes.Clone(stream)
	corrupt[len(corrupt)/2] ^= 4
	f.Add(corrupt, []byte{50}, false)

	f.Fuzz(func(t *testing.T, data, sizes []byte, fill bool) {
		d := NewDecoder(testKey, nonceB)
		fed := 0 // bytes handed to the Decoder so far
		consumed := 0
		var peer Nonce
		var failed error
		drain := func() {
			for {
				m, ok, err := d.Next()
				if err != nil {
					if failed == nil {
						known := false
						for _, s := range allSentinels {
							known = known || errors.Is(err, s)
						}
						require.True(t, known, "error with no sentinel: %v", err)
						failed = err
					}
					require.Same(t, failed, err, "poisoned: the same error again")
					return
				}
				require.Nil(t, failed, "a message after an error")
				if !ok {
					return
				}
				end := fed - d.Buffered()
				frame := data[consumed:end]
				consumed = end
				ctx := zeroCtx
				if m.Type != MsgHello {
					ctx = ctxOf(peer, nonceB)
				} else {
					peer = m.Nonce
				}
				require.True(t, macOK(frame, ctx), "%v returned from a frame that is not authentic", m.Type)
				require.Equal(t, binary.BigEndian.Uint64(frame[13:]), m.Seq)
				require.LessOrEqual(t, len(frame), MaxFrame)
			}
		}
		if fill {
			src := &chunkReader{data: data, sizes: bytes.Clone(sizes)}
			for {
				n, err := d.Fill(src)
				fed += n
				drain()
				if err != nil {
					break
				}
				// Memory: never more than a frame plus a gulp.
				require.LessOrEqual(t, cap(d.buf), MaxFrame+fillChunk)
			}
		} else {
			for i, rest := 0, data; len(rest) > 0; i++ {
				n := len(rest)
				if len(sizes) > 0 {
					n = min(n, int(sizes[i%len(sizes)])+1)
				}
				d.Feed(rest[:n])
				if failed == nil {
					fed += n
				}
				rest = rest[n:]
				drain()
			}
		}
	})
}

// FuzzParseBody reaches the body parsers directly, without a key. Any
// body either fails with ErrMalformed or ErrUnknownType, or parses to a
// message that encodes back (appendBody accepts it) to the same bytes
// (OPEN aside: its JSON has many spellings) and parses again to the same
// message.
func FuzzParseBody(f *testing.F) {
	for _, m := range append(samples(f), Message{Type: MsgHello, Role: 2, Nonce: nonceA, Version: 1, StartAsBackup: true}) {
		b, err := appendBody(nil, &m)
		require.NoError(f, err)
		f.Add(byte(m.Type), b)
	}
	f.Add(byte(0), []byte{})
	f.Add(byte(MsgOpen), []byte("\x0a\x00\x00\x01\x00\x07\x0a\x00\x00\x02\x00\x08\x00\x00\x00\x02{}"))

	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		var m Message
		m.Type = MsgType(typ)
		err := parseBody(m.Type, body, &m)
		if err != nil {
			require.True(t, errors.Is(err, ErrMalformed) || errors.Is(err, ErrUnknownType), "%v", err)
			return
		}
		b2, err := appendBody(nil, &m)
		require.NoError(t, err, "parsed, so it encodes")
		if m.Type != MsgOpen && m.Type != MsgRejoin { // the snapshot is JSON
			require.True(t, bytes.Equal(body, b2), "one encoding per message: %x then %x", body, b2)
		}
		m2 := Message{Type: m.Type}
		require.NoError(t, parseBody(m2.Type, b2, &m2))
		require.Equal(t, m, m2)
	})
}

// FuzzRoundTrip builds messages of every type from fuzzed fields, sends
// them through an Encoder and a Decoder, and checks that what comes out is
// what went in.
func FuzzRoundTrip(f *testing.F) {
	f.Add(byte(MsgIn), uint64(3), uint32(1), uint32(2), uint32(3), uint32(4), byte(1), []byte("data"))
	f.Add(byte(MsgAcked), uint64(0), uint32(0xffffffff), uint32(0), uint32(7), uint32(1<<31), byte(3), []byte{})
	f.Add(byte(MsgHeartbeat), uint64(1<<63), uint32(1), uint32(1), uint32(1), uint32(1), byte(0), []byte(nil))

	f.Fuzz(func(t *testing.T, typ byte, epoch uint64, a, b, c, d uint32, small byte, data []byte) {
		id := tcp.FourTuple{
			LocalAddr: netip.AddrFrom4([4]byte{byte(a), byte(a >> 8), byte(a >> 16), byte(a >> 24)}), LocalPort: uint16(b),
			RemoteAddr: netip.AddrFrom4([4]byte{byte(c), byte(c >> 8), byte(c >> 16), byte(c >> 24)}), RemotePort: uint16(d),
		}
		m := Message{Type: MsgType(typ%uint8(msgTypeEnd-MsgHeartbeat)) + MsgHeartbeat, Epoch: epoch}
		switch m.Type {
		case MsgHeartbeat:
			m.Sent = int64(uint64(a)<<32 | uint64(b))
			m.Ping, m.Pong = uint64(c)<<7, uint64(d)<<40
			m.Role, m.StartAsBackup = small%5+1, small&0x80 != 0
		case MsgSyncAck:
			m.Applied = uint64(c)<<32 | uint64(d)
		case MsgOpen:
			m.Snapshot = testSnapshot(t)
			m.Conn = m.Snapshot.ID
		case MsgRejoin:
			m.Snapshot = testSnapshot(t)
			m.Conn, m.Written = m.Snapshot.ID, tcp.Seq(a^d)
			if len(data) > 0 {
				m.State = data
			}
		case MsgIn, MsgOut:
			m.Conn, m.DataSeq = id, tcp.Seq(a^b)
			if len(data) > 0 {
				m.Data = data
			}
		case MsgAcked:
			m.Conn = id
			m.Progress = tcp.Progress{SndUna: tcp.Seq(a), SndWnd: b, TSRecent: c, RcvAdvEdge: tcp.Seq(d),
				ReceivedEnd: tcp.Seq(a + c), WrittenEnd: tcp.Seq(b ^ d), PeerFin: small&1 != 0, FinQueued: small&2 != 0}
		case MsgClose:
			m.Conn, m.Close = id, CloseKind(small%3+1)
		case MsgOutSum:
			m.Conn, m.DataSeq, m.SumLen, m.Sum = id, tcp.Seq(a^b), c%stack.MaxSummed+1, d
		case MsgChecked:
			m.Conn, m.DataSeq = id, tcp.Seq(b^c)
		}
		s1, s2 := handshake(t)
		frame, err := s1.Enc.AppendFrame(nil, &m)
		require.NoError(t, err)
		got := decodeOne(t, s2.Dec, frame)
		assert.Equal(t, m, got)
	})
}
