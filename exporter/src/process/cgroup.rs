//! What a process's cgroup path tells about it: its container.

/// A 64-hex-digit container id in a cgroup path (docker, containerd, cri-o layouts).
pub fn container_id(path: &str) -> Option<String> {
    path.split(['/', '-', '.'])
        .find(|part| part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::container_id;

    #[test]
    fn container_ids_from_cgroup_paths() {
        let id = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
        assert_eq!(
            container_id(&format!(
                "/kubepods.slice/kubepods-burstable.slice/cri-containerd-{id}.scope"
            )),
            Some(id.to_string())
        );
        assert_eq!(container_id(&format!("/docker/{id}")), Some(id.to_string()));
        assert_eq!(container_id("/system.slice/ssh.service"), None);
    }
}
