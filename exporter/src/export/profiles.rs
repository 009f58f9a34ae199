//! Profiles over OTLP: each window of the continuous profiler (`families::profile::continuous`) as one
//! `ExportProfilesServiceRequest` of the `v1development` profiles protocol, one
//! `ResourceProfiles` per observed process (the same resource attributes as its metrics and
//! spans), every table shared in the request's dictionary.
//!
//! On-CPU profiles count samples (`samples`/`count`) with a period of one sampling interval in
//! CPU nanoseconds; off-CPU profiles carry nanoseconds blocked (`off_cpu`/`nanoseconds`).
//! Kernel frames carry `profile.frame.type=kernel`, user frames `native`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use opentelemetry_proto::tonic::{
    collector::profiles::v1development::ExportProfilesServiceRequest,
    common::v1::{AnyValue, any_value},
    profiles::v1development::{
        Function, KeyValueAndUnit, Line, Location, Mapping, Profile, ProfilesDictionary,
        ResourceProfiles, Sample, ScopeProfiles, Stack as OtlpStack, ValueType,
    },
};

use tokio::sync::watch;

use super::otlp::{OtlpClient, process_resource, scope, unix_nanos};
use crate::{
    families::profile::{
        collect::{Kind, Stack},
        continuous::{NAME_EVERY, ProfileStats, Profiler, Window},
        symbolize::Frame,
    },
    process::{ProcessCache, ProcessResource},
};

/// The dictionary being built: every table starts with its zero value, as the protocol asks.
struct Dictionary {
    tables: ProfilesDictionary,
    strings: HashMap<String, i32>,
    mappings: HashMap<String, i32>,
    locations: HashMap<(String, String, bool), i32>,
    stacks: HashMap<Vec<i32>, i32>,
    /// `profile.frame.type` = kernel, native.
    frame_type: [i32; 2],
}

impl Dictionary {
    fn new() -> Self {
        let mut d = Self {
            tables: ProfilesDictionary {
                mapping_table: vec![Mapping::default()],
                location_table: vec![Location::default()],
                function_table: vec![Function::default()],
                link_table: vec![Default::default()],
                string_table: vec![String::new()],
                attribute_table: vec![KeyValueAndUnit::default()],
                stack_table: vec![OtlpStack::default()],
            },
            strings: HashMap::from([(String::new(), 0)]),
            mappings: HashMap::new(),
            locations: HashMap::new(),
            stacks: HashMap::new(),
            frame_type: [0, 0],
        };
        d.frame_type = ["kernel", "native"].map(|kind| {
            let key = d.string("profile.frame.type");
            d.tables.attribute_table.push(KeyValueAndUnit {
                key_strindex: key,
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(kind.to_string())),
                }),
                unit_strindex: 0,
            });
            (d.tables.attribute_table.len() - 1) as i32
        });
        d
    }

    fn string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        self.tables.string_table.push(s.to_string());
        let i = (self.tables.string_table.len() - 1) as i32;
        self.strings.insert(s.to_string(), i);
        i
    }

    fn mapping(&mut self, module: &str) -> i32 {
        if module.is_empty() {
            return 0;
        }
        if let Some(&i) = self.mappings.get(module) {
            return i;
        }
        let filename_strindex = self.string(module);
        self.tables.mapping_table.push(Mapping {
            filename_strindex,
            ..Default::default()
        });
        let i = (self.tables.mapping_table.len() - 1) as i32;
        self.mappings.insert(module.to_string(), i);
        i
    }

    /// One location per distinct (function, module, side), with its function.
    fn location(&mut self, frame: &Frame) -> i32 {
        let key = (frame.name.clone(), frame.module.clone(), frame.kernel);
        if let Some(&i) = self.locations.get(&key) {
            return i;
        }
        let name_strindex = self.string(&frame.name);
        self.tables.function_table.push(Function {
            name_strindex,
            system_name_strindex: name_strindex,
            ..Default::default()
        });
        let function_index = (self.tables.function_table.len() - 1) as i32;
        let mapping_index = self.mapping(&frame.module);
        self.tables.location_table.push(Location {
            mapping_index,
            line: vec![Line {
                function_index,
                ..Default::default()
            }],
            attribute_indices: vec![self.frame_type[usize::from(!frame.kernel)]],
            ..Default::default()
        });
        let i = (self.tables.location_table.len() - 1) as i32;
        self.locations.insert(key, i);
        i
    }

    /// A stack, leaf first as the protocol has it; the thread name at our root is not a frame
    /// (it is the resource's, and `thread.name` on the sample).
    fn stack(&mut self, frames: &[Frame]) -> i32 {
        let location_indices: Vec<i32> = frames
            .iter()
            .skip(1)
            .rev()
            .map(|f| self.location(f))
            .collect();
        if let Some(&i) = self.stacks.get(&location_indices) {
            return i;
        }
        self.tables.stack_table.push(OtlpStack {
            location_indices: location_indices.clone(),
        });
        let i = (self.tables.stack_table.len() - 1) as i32;
        self.stacks.insert(location_indices, i);
        i
    }

    fn thread_name(&mut self, name: &str) -> i32 {
        let key_strindex = self.string("thread.name");
        self.tables.attribute_table.push(KeyValueAndUnit {
            key_strindex,
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(name.to_string())),
            }),
            unit_strindex: 0,
        });
        (self.tables.attribute_table.len() - 1) as i32
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            type_strindex: self.string(kind),
            unit_strindex: self.string(unit),
            aggregation_temporality: 0,
        }
    }
}

/// One window as an OTLP profiles request; `resource_of(tgid, thread name)` gives each
/// process's resource.
pub fn build_request(
    window: &Window,
    mut resource_of: impl FnMut(u32, &str) -> Arc<ProcessResource>,
) -> ExportProfilesServiceRequest {
    let mut dict = Dictionary::new();
    let mut threads: HashMap<String, i32> = HashMap::new();
    let (sample_type, period_type, period) = match window.kind {
        Kind::OnCpu { frequency } => (
            dict.value_type("samples", "count"),
            Some(dict.value_type("cpu", "nanoseconds")),
            1_000_000_000 / frequency.max(1) as i64,
        ),
        Kind::OffCpu => (dict.value_type("off_cpu", "nanoseconds"), None, 0),
    };
    let resource_profiles = window
        .processes
        .iter()
        .filter(|(_, stacks)| !stacks.is_empty())
        .map(|(tgid, stacks)| {
            let comm = stacks[0].frames.first().map(|f| f.name.as_str());
            let resource = resource_of(*tgid, comm.unwrap_or_default());
            let samples = stacks
                .iter()
                .map(|stack| sample(&mut dict, &mut threads, stack, window.kind))
                .collect();
            ResourceProfiles {
                resource: Some(process_resource(&resource)),
                scope_profiles: vec![ScopeProfiles {
                    scope: Some(scope("periscope")),
                    profiles: vec![Profile {
                        sample_type: Some(sample_type),
                        sample: samples,
                        time_unix_nano: unix_nanos(window.start),
                        duration_nano: window.duration().as_nanos() as u64,
                        period_type,
                        period,
                        profile_id: rand::random::<[u8; 16]>().to_vec(),
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();
    ExportProfilesServiceRequest {
        resource_profiles,
        dictionary: Some(dict.tables),
    }
}

/// Names new stacks every few seconds and closes a window every `interval`, sending it to
/// `client` when OTLP is configured; at shutdown, the last window. A window whose export
/// fails is dropped (profiles are not cumulative): the next one starts where it ended.
pub async fn run(
    profiler: Profiler,
    stats: Arc<ProfileStats>,
    client: Option<OtlpClient>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut naming = tokio::time::interval(NAME_EVERY);
    naming.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut windows = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    windows.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = naming.tick() => {
                profiler.name_new_stacks();
                continue;
            }
            _ = windows.tick() => false,
            _ = stopped.changed() => true,
        };
        let Some(window) = profiler.take_window().await else {
            return;
        };
        if let Some(client) = &client {
            let outcome = match send(client, &window).await {
                Sent::Exported => &stats.exported,
                Sent::Failed => &stats.export_failed,
                Sent::Empty => &stats.empty,
            };
            outcome.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if last {
            return;
        }
    }
}

enum Sent {
    Exported,
    Failed,
    Empty,
}

async fn send(client: &OtlpClient, window: &Window) -> Sent {
    // Read afresh each window: a window's processes are few, and none expire within one.
    let mut resources = ProcessCache::new();
    let request = build_request(window, |tgid, comm| {
        resources.resource(tgid, || comm.to_string())
    });
    if request.resource_profiles.is_empty() {
        return Sent::Empty;
    }
    let samples: usize = request
        .resource_profiles
        .iter()
        .flat_map(|r| &r.scope_profiles)
        .flat_map(|s| &s.profiles)
        .map(|p| p.sample.len())
        .sum();
    match client.send(&request).await {
        Ok(()) => {
            tracing::debug!(
                processes = request.resource_profiles.len(),
                samples,
                "profiles exported"
            );
            Sent::Exported
        }
        Err(e) => {
            tracing::warn!(
                endpoint = %client.endpoint,
                error = %e.message,
                "OTLP profiles export failed; this window's profiles are dropped"
            );
            Sent::Failed
        }
    }
}

fn sample(
    dict: &mut Dictionary,
    threads: &mut HashMap<String, i32>,
    stack: &Stack,
    kind: Kind,
) -> Sample {
    let thread = stack
        .frames
        .first()
        .map(|f| f.name.clone())
        .unwrap_or_default();
    let thread_attr = match threads.get(&thread) {
        Some(&i) => i,
        None => {
            let i = dict.thread_name(&thread);
            threads.insert(thread, i);
            i
        }
    };
    let value = match kind {
        Kind::OnCpu { .. } => stack.events as i64,
        Kind::OffCpu => stack.value as i64,
    };
    Sample {
        stack_index: dict.stack(&stack.frames),
        values: vec![value],
        attribute_indices: vec![thread_attr],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn frame(name: &str, module: &str, kernel: bool) -> Frame {
        Frame {
            name: name.into(),
            module: module.into(),
            kernel,
        }
    }

    fn window() -> Window {
        let root = frame("burner", "", false);
        let main = frame("main", "/usr/bin/burner", false);
        let hot = frame("hot", "/usr/bin/burner", false);
        let tick = frame("asm_sysvec_apic_timer_interrupt", "", true);
        Window {
            start: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100),
            end: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(110),
            kind: Kind::OnCpu { frequency: 19 },
            processes: vec![(
                42,
                vec![
                    Stack {
                        frames: vec![root.clone(), main.clone(), hot.clone(), tick],
                        value: 7,
                        events: 7,
                    },
                    Stack {
                        frames: vec![root, main, hot],
                        value: 3,
                        events: 3,
                    },
                ],
            )],
        }
    }

    fn resource(tgid: u32, _: &str) -> Arc<ProcessResource> {
        Arc::new(ProcessResource {
            service_name: "burner".into(),
            attributes: vec![("process.pid".into(), tgid.to_string())],
        })
    }

    #[test]
    fn stacks_resolve_through_the_dictionary_leaf_first_with_their_sample_counts() {
        let request = build_request(&window(), resource);
        let dict = request.dictionary.as_ref().unwrap();
        let profile = &request.resource_profiles[0].scope_profiles[0].profiles[0];
        let names = |sample: &Sample| -> Vec<String> {
            dict.stack_table[sample.stack_index as usize]
                .location_indices
                .iter()
                .map(|&l| {
                    let line = &dict.location_table[l as usize].line[0];
                    let f = &dict.function_table[line.function_index as usize];
                    dict.string_table[f.name_strindex as usize].clone()
                })
                .collect()
        };
        assert_eq!(
            names(&profile.sample[0]),
            ["asm_sysvec_apic_timer_interrupt", "hot", "main"]
        );
        assert_eq!(names(&profile.sample[1]), ["hot", "main"]);
        assert_eq!(
            profile
                .sample
                .iter()
                .map(|s| s.values[0])
                .collect::<Vec<_>>(),
            [7, 3]
        );
        assert_eq!(profile.period, 1_000_000_000 / 19);
        assert_eq!(profile.duration_nano, 10_000_000_000);
        let st = profile.sample_type.unwrap();
        assert_eq!(dict.string_table[st.type_strindex as usize], "samples");
    }

    #[test]
    fn every_table_starts_with_its_zero_value_and_frames_say_their_side() {
        let request = build_request(&window(), resource);
        let dict = request.dictionary.unwrap();
        assert_eq!(dict.string_table[0], "");
        assert_eq!(dict.location_table[0], Location::default());
        assert_eq!(dict.stack_table[0], OtlpStack::default());
        let kernel_location = dict
            .location_table
            .iter()
            .find(|l| {
                l.line.first().is_some_and(|line| {
                    let f = &dict.function_table[line.function_index as usize];
                    dict.string_table[f.name_strindex as usize] == "asm_sysvec_apic_timer_interrupt"
                })
            })
            .unwrap();
        let attr = &dict.attribute_table[kernel_location.attribute_indices[0] as usize];
        assert_eq!(
            dict.string_table[attr.key_strindex as usize],
            "profile.frame.type"
        );
        assert_eq!(
            attr.value.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("kernel".into()))
        );
    }
}
