//! Voice activity detection from the levels clients put in their audio packets (RFC 6464), so
//! that rtcd can tell a call who is speaking without decoding any audio.

/// Voice activity from RFC 6464 levels (0 = loudest, 127 = silence, in -dBov) with hysteresis:
/// speaking after `ON_PACKETS` consecutive loud packets (~100 ms at 20 ms ptime), silent after
/// `OFF_PACKETS` consecutive quiet ones (~500 ms), so a breath does not flap the indicator.
#[derive(Debug, Default)]
pub struct VoiceDetector {
    speaking: bool,
    run: u32,
}

impl VoiceDetector {
    /// Levels at or below this (louder than -50 dBov) count as voice.
    pub const THRESHOLD: u8 = 50;
    const ON_PACKETS: u32 = 5;
    const OFF_PACKETS: u32 = 25;

    /// Whether the last decision was "speaking".
    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// Feeds one packet's level; returns the new state when it changes.
    pub fn observe(&mut self, level: u8) -> Option<bool> {
        let loud = level <= Self::THRESHOLD;
        if loud != self.speaking {
            self.run += 1;
            let needed = if loud {
                Self::ON_PACKETS
            } else {
                Self::OFF_PACKETS
            };
            if self.run >= needed {
                self.speaking = loud;
                self.run = 0;
                return Some(loud);
            }
        } else {
            self.run = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::VoiceDetector;

    #[test]
    fn voice_needs_a_run_of_loud_packets_and_a_longer_run_of_quiet_ones() {
        let mut vad = VoiceDetector::default();
        for _ in 0..4 {
            assert_eq!(vad.observe(10), None);
        }
        assert_eq!(vad.observe(10), Some(true));
        // A short dip does not end speech.
        for _ in 0..10 {
            assert_eq!(vad.observe(127), None);
        }
        assert_eq!(vad.observe(10), None);
        for _ in 0..24 {
            assert_eq!(vad.observe(127), None);
        }
        assert_eq!(vad.observe(127), Some(false));
        // Quiet noise never triggers.
        for _ in 0..100 {
            assert_eq!(vad.observe(90), None);
        }
    }
}
